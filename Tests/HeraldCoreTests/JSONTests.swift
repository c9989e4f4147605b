import HeraldCore
import Testing

@Suite("JSON parsing and compact output")
struct JSONTests {
    @Test("Parses every kind of value and writes it back compactly, numbers verbatim")
    func roundTrip() throws {
        let value = try JSON.parse(" { \"a\" : [1, -2.50, 3e+2, true, false, null], \"s\": \"q\\\"\\\\\\n\\u00e9\\ud83d\\ude80/\" } ")
        #expect(value.compactText == "{\"a\":[1,-2.50,3e+2,true,false,null],\"s\":\"q\\\"\\\\\\né🚀/\"}")
        #expect(value["s"] == .string("q\"\\\né🚀/"))
    }

    @Test("Rejects malformed JSON with a position")
    func errors() {
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "01", "1.", "-", "\"\\x\"", "\"\u{1}\"", "tru", "[1] x", "\"\\ud800\"", "{a:1}"] {
            #expect(throws: JSON.ParseError.self, "\(bad.debugDescription)") { try JSON.parse(bad) }
        }
        let deep = String(repeating: "[", count: 300) + String(repeating: "]", count: 300)
        #expect(throws: JSON.ParseError.self) { try JSON.parse(deep) }
    }

    @Test("Quoting escapes control characters and line separators")
    func quoting() {
        #expect(JSON.quoted("a\"b\\c\n\t\u{1}\u{2028}") == "\"a\\\"b\\\\c\\n\\t\\u0001\\u2028\"")
    }
}
