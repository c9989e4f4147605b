/// A topic (or any name) that compares and hashes by its UTF-8 bytes.
///
/// Swift's `String` compares by Unicode canonical equivalence, so `"café"` in NFC and in NFD
/// are equal strings, and a `Set<String>` or `[String: V]` treats them as one key. Topics are
/// names chosen by publishers, and a subscriber to one must not receive events published to
/// another that merely looks the same (SPEC §16): every topic-keyed collection uses this key.
/// It is also cheaper than `String`'s own hashing, which normalises non-ASCII text first.
///
/// It holds a `Substring`, so a prefix of a topic is a key without a copy.
public struct TopicKey: Hashable, Sendable, CustomStringConvertible {
    public let text: Substring

    @inlinable
    public init(_ name: String) { self.text = Substring(name) }

    @inlinable
    public init(_ text: Substring) { self.text = text }

    public var name: String { String(text) }
    public var description: String { name }

    @inlinable
    public static func == (lhs: TopicKey, rhs: TopicKey) -> Bool {
        lhs.text.utf8.elementsEqual(rhs.text.utf8)
    }

    @inlinable
    public func hash(into hasher: inout Hasher) {
        let done: Void? = text.utf8.withContiguousStorageIfAvailable { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        if done == nil {
            Array(text.utf8).withUnsafeBytes { hasher.combine(bytes: $0) }
        }
        hasher.combine(0xFF as UInt8) // never a UTF-8 byte: ends the key
    }
}

extension StringProtocol {
    /// Byte-wise equality (no Unicode normalisation), for topics and tokens.
    @inlinable
    public func bytesEqual<Other: StringProtocol>(_ other: Other) -> Bool { utf8.elementsEqual(other.utf8) }

    /// Byte-wise prefix test (no Unicode normalisation): `cafe*` matches `cafe` + U+0301.
    @inlinable
    public func bytesHavePrefix<Other: StringProtocol>(_ prefix: Other) -> Bool { utf8.starts(with: prefix.utf8) }
}
