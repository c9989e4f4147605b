/// `application/x-www-form-urlencoded` decoding, used for query strings (SPEC §11: `+` is a
/// space) and for form publish bodies.
public enum FormURLEncoded {
    /// Decodes `a=1&b=2` into ordered pairs. A name without `=` has an empty value.
    /// - Throws: ``ValidationError`` when a decoded name or value is not valid UTF-8.
    public static func parse<Bytes: Collection>(_ bytes: Bytes) throws(ValidationError) -> [(name: String, value: String)]
    where Bytes.Element == UInt8 {
        var pairs: [(name: String, value: String)] = []
        for part in bytes.split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: true) {
            let name: String
            let value: String
            if let equals = part.firstIndex(of: UInt8(ascii: "=")) {
                name = try decode(part[part.startIndex..<equals])
                value = try decode(part[part.index(after: equals)...])
            } else {
                name = try decode(part)
                value = ""
            }
            pairs.append((name, value))
        }
        return pairs
    }

    /// Percent-decodes one component, turning `+` into a space. Malformed escapes (`%zz`, a
    /// trailing `%`) are kept literally, as browsers do.
    public static func decode<Bytes: Collection>(_ bytes: Bytes, plusIsSpace: Bool = true) throws(ValidationError) -> String
    where Bytes.Element == UInt8 {
        var ascii = true
        if !bytes.contains(where: { ascii = ascii && $0 < 0x80; return $0 == UInt8(ascii: "%") || ($0 == UInt8(ascii: "+") && plusIsSpace) }) {
            // Nothing to decode. ASCII is UTF-8 as it is (the common case: a topic name in a
            // query; `String(validating:)` on a slice costs a generic metadata look-up each
            // call); anything else is checked.
            if ascii { return String(decoding: bytes, as: UTF8.self) }
            guard let text = String(validating: bytes, as: UTF8.self) else {
                throw ValidationError("'\(String(decoding: bytes, as: UTF8.self).prefix(60))' does not decode to valid UTF-8")
            }
            return text
        }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var index = bytes.startIndex
        while index != bytes.endIndex {
            let byte = bytes[index]
            if byte == UInt8(ascii: "%") {
                let first = bytes.index(after: index)
                if first != bytes.endIndex {
                    let second = bytes.index(after: first)
                    if second != bytes.endIndex, let high = hexValue(bytes[first]), let low = hexValue(bytes[second]) {
                        out.append(high << 4 | low)
                        index = bytes.index(after: second)
                        continue
                    }
                }
                out.append(byte)
            } else if byte == UInt8(ascii: "+") && plusIsSpace {
                out.append(0x20)
            } else {
                out.append(byte)
            }
            index = bytes.index(after: index)
        }
        guard let text = String(validating: out, as: UTF8.self) else {
            throw ValidationError("'\(String(decoding: bytes, as: UTF8.self).prefix(60))' does not decode to valid UTF-8")
        }
        return text
    }

    static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case 0x30...0x39: return byte - 0x30
        case 0x41...0x46: return byte - 0x41 + 10
        case 0x61...0x66: return byte - 0x61 + 10
        default: return nil
        }
    }
}
