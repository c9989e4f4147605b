#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The process's resource limits, as the server sizes itself by them.
public enum ProcessLimits {
    /// The soft limit on open files (what `accept` runs into).
    public static func openFiles() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
        if limit.rlim_cur > UInt64(Int32.max) { return Int(Int32.max) } // also RLIM_INFINITY
        return Int(limit.rlim_cur)
    }

    /// Raises the soft open-file limit to the hard limit (one socket per stream).
    public static func raiseOpenFiles() {
        var limit = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
    }
}
