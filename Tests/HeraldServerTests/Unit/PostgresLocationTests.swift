@testable import HeraldServer
import Testing

/// `--store postgres://...`: what a URL means, and that a bad one is refused with a message
/// that never shows the password.
@Suite("PostgresLocation: the cluster's database URL")
struct PostgresLocationTests {
    @Test("Every part is read, percent-decoded, with defaults for the missing ones")
    func parts() throws {
        let full = try PostgresLocation(url: "postgres://app%40x:p%3Ass@db.example:6543/herald%20prod?sslmode=require&application_name=n1")
        #expect(full.username == "app@x")
        #expect(full.password == "p:ss")
        #expect(full.host == "db.example")
        #expect(full.port == 6543)
        #expect(full.database == "herald prod")
        #expect(full.tls == .require)
        #expect(full.applicationName == "n1")
        #expect(!full.description.contains("p:ss") && !full.description.contains("p%3Ass"))

        let minimal = try PostgresLocation(url: "postgresql://localhost")
        #expect(minimal.username == "postgres" && minimal.password == nil)
        #expect(minimal.port == 5432 && minimal.database == "postgres" && minimal.tls == .disable)

        let v6 = try PostgresLocation(url: "postgres://u@[::1]:5433/d")
        #expect(v6.host == "::1" && v6.port == 5433 && v6.description == "postgres://u@[::1]:5433/d")
        // A password may hold '@' when percent-encoded or not: the last '@' ends the user part.
        let at = try PostgresLocation(url: "postgres://u:a@b@h/d")
        #expect(at.password == "a@b" && at.host == "h")
    }

    @Test("Bad URLs are usage errors that name the problem and hide the password",
          arguments: [
            ("postgres://u:secret@h:0/d", "port"), ("postgres://u:secret@h:99999/d", "port"),
            ("postgres://u:secret@h:x/d", "port"), ("postgres://u:secret@/d", "host"),
            ("postgres://u:secret@[::1/d", "'['"), ("postgres://u:secret@h/d?sslmode=maybe", "sslmode"),
            ("postgres://u:secret@h/d?pool=3", "unknown parameter"), ("postgres://:secret@h/d", "user"),
            ("postgres://u:secret@h/%zz", "percent"),
          ])
    func refused(url: String, mentions: String) {
        do {
            _ = try PostgresLocation(url: url)
            Issue.record("\(url) was accepted")
        } catch {
            #expect(error.description.contains(mentions), "\(error.description)")
            #expect(!error.description.contains("secret"), "\(error.description)")
        }
    }

    @Test("The store flag picks cluster mode for both schemes")
    func schemes() throws {
        for url in ["postgres://u@h/d", "postgresql://u@h/d"] {
            guard case .postgres(let location) = try HeraldConfiguration.Store(url: url) else {
                Issue.record("\(url) is not cluster mode")
                continue
            }
            #expect(location.host == "h")
        }
    }
}
