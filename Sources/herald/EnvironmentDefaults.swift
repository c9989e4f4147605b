import ArgumentParser

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Maps `HERALD_*` environment variables onto command-line options the user did not give.
enum EnvironmentDefaults {
    enum Kind {
        /// A text value.
        case value
        /// A whole number, checked here so that a bad one names the variable.
        case integer
        /// A number of seconds (may have a fraction).
        case number
        case repeatable, flag
    }

    /// Every option, by its long name.
    static let options: [(name: String, kind: Kind)] = [
        ("host", .value), ("port", .integer), ("public", .value), ("history", .integer), ("history-max-age", .number),
        ("cache", .integer), ("keepalive", .number), ("retry-ms", .integer), ("publish-key", .repeatable),
        ("tls-cert", .value), ("tls-key", .value), ("h2-max-streams", .integer), ("subscriber-key", .repeatable), ("subscriber-audience", .value), ("public-topic", .repeatable),
        ("cors-origin", .repeatable), ("max-connections", .integer), ("max-retained", .integer), ("max-event-bytes", .integer),
        ("max-body-bytes", .integer), ("max-queued-bytes", .integer), ("no-chunked", .flag), ("demo", .flag), ("store", .value),
        ("threads", .integer), ("stream-writes", .value), ("publish-path", .value), ("shutdown-grace", .number), ("log-level", .value),
    ]

    static func variableName(for option: String) -> String {
        "HERALD_" + option.uppercased().replacingDashes()
    }

    static func merge(arguments: [String], environment: [String: String]) throws -> [String] {
        var merged = arguments
        for (name, kind) in options {
            let given = arguments.contains { $0 == "--\(name)" || $0.hasPrefix("--\(name)=") }
            let variable = variableName(for: name)
            guard !given, let value = environment[variable] else { continue }
            switch kind {
            case .value:
                merged += ["--\(name)", value]
            case .integer:
                guard Int(value.trimmingCharacters()) != nil else {
                    throw ValidationError("\(variable)='\(value.prefix(40))' is not a whole number (it sets --\(name))")
                }
                merged += ["--\(name)", value.trimmingCharacters()]
            case .number:
                guard Double(value.trimmingCharacters()) != nil else {
                    throw ValidationError("\(variable)='\(value.prefix(40))' is not a number of seconds (it sets --\(name))")
                }
                merged += ["--\(name)", value.trimmingCharacters()]
            case .repeatable:
                for item in value.split(separator: ",") {
                    let trimmed = item.trimmingCharacters()
                    if !trimmed.isEmpty { merged += ["--\(name)", trimmed] }
                }
            case .flag:
                switch value.lowercased() {
                case "1", "true", "yes", "on": merged.append("--\(name)")
                case "0", "false", "no", "off", "": break
                default: throw ValidationError("\(variable)='\(value)' is not a boolean (use 1/true or 0/false)")
                }
            }
        }
        return merged
    }

    static func processEnvironment() -> [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            pointer += 1
        }
        return result
    }
}

extension String {
    fileprivate func replacingDashes() -> String { String(map { $0 == "-" ? "_" : $0 }) }
}

extension StringProtocol {
    fileprivate func trimmingCharacters() -> String {
        var slice = Substring(self)
        while slice.first == " " { slice.removeFirst() }
        while slice.last == " " { slice.removeLast() }
        return String(slice)
    }
}
