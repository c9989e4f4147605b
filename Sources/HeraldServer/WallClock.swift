#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Wall-clock time (NIO's `NIODeadline` is monotonic, which is right for timers but not for
/// timestamps shown to people or for seeding the id sequence).
public enum WallClock {
    public static func microsecondsSince1970() -> Int64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Int64(spec.tv_sec) * 1_000_000 + Int64(spec.tv_nsec) / 1000
    }

    static func millisecondsSince1970() -> Int64 { microsecondsSince1970() / 1000 }

    public static func secondsSince1970() -> Double { Double(microsecondsSince1970()) / 1_000_000 }

    /// ISO 8601 in UTC with milliseconds, e.g. `2026-11-21T15:30:00.123Z`.
    static func iso8601(millisecondsSince1970 ms: Int64) -> String {
        var seconds = time_t(ms / 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(ms % 1000), 3))Z"
    }
}
