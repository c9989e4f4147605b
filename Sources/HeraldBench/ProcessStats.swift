#if canImport(Glibc)
import Glibc
#endif

/// Memory and CPU of a server process (and its child processes, for nginx's workers), read
/// from /proc. PSS divides shared pages among the processes that map them, so nginx's
/// shared-memory zone is not counted once per worker.
struct ProcessStats: Codable, Sendable {
    var rssKiB: Int
    var pssKiB: Int
    /// user + system CPU seconds since the process started.
    var cpuSeconds: Double
    var processes: Int

    static func read(pid: Int32) -> ProcessStats? {
        let pids = [pid] + children(of: pid)
        var total = ProcessStats(rssKiB: 0, pssKiB: 0, cpuSeconds: 0, processes: 0)
        for pid in pids {
            guard let status = readFile("/proc/\(pid)/status") else { continue }
            total.processes += 1
            total.rssKiB += field(status, "VmRSS:") ?? 0
            if let rollup = readFile("/proc/\(pid)/smaps_rollup") {
                total.pssKiB += field(rollup, "Pss:") ?? 0
            }
            if let stat = readFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") {
                let fields = stat[stat.index(after: close)...].split(separator: " ")
                // fields[0] is the state (field 3); utime and stime are fields 14 and 15.
                if fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) {
                    total.cpuSeconds += (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
                }
            }
        }
        return total.processes == 0 ? nil : total
    }

    static func children(of parent: Int32) -> [Int32] {
        guard let directory = opendir("/proc") else { return [] }
        defer { closedir(directory) }
        var result: [Int32] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard let pid = Int32(name), let stat = readFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 1, Int32(fields[1]) == parent { result.append(pid) }
        }
        return result
    }

    static func field(_ text: String, _ name: String) -> Int? {
        for line in text.split(separator: "\n") where line.hasPrefix(name) {
            return Int(line.dropFirst(name.count).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "")
        }
        return nil
    }

    static func readFile(_ path: String) -> String? {
        guard let file = fopen(path, "r") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = fread(&buffer, 1, buffer.count, file)
            if count <= 0 { break }
            bytes.append(contentsOf: buffer[0..<count])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

enum Clock {
    /// Wall-clock nanoseconds (the publisher and the receivers share one machine).
    static func nowNanoseconds() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
    }
}

/// Raises the soft open-files limit to the hard one (a load tool holds one socket a stream).
func raiseOpenFileLimit() -> Int {
    var limit = rlimit()
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    limit.rlim_cur = limit.rlim_max
    setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    return Int(limit.rlim_cur)
}
