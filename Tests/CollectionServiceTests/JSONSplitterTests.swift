import Foundation
import TestSupport
import Testing

@testable import CollectionService

/// The splitter finds where values end in bytes it does not parse: proved against Foundation's own JSON
/// writer on seeded random documents (nesting past the 64 levels its bracket register holds, strings full of
/// quotes and backslashes), and on corrupted ones.
@Suite("JSONSplitter")
struct JSONSplitterTests {

    static func string(_ random: inout SeededRandom) -> String {
        let pieces = ["a", "\"", "\\", "\\\\", "\\\"", "{", "}", "[", "]", ",", ":", "é", "\n", " "]
        return (0..<Int.random(in: 0...12, using: &random)).map { _ in pieces.randomElement(using: &random)! }
            .joined()
    }

    static func value(_ random: inout SeededRandom, depth: Int) -> Any {
        switch depth > 0 ? Int.random(in: 0...6, using: &random) : Int.random(in: 3...6, using: &random) {
        case 0, 1:
            var object: [String: Any] = [:]
            for _ in 0..<Int.random(in: 0...3, using: &random) {
                object[string(&random)] = value(&random, depth: depth - 1)
            }
            return object
        case 2: return (0..<Int.random(in: 0...3, using: &random)).map { _ in value(&random, depth: depth - 1) }
        case 3: return string(&random)
        case 4: return Int.random(in: -1000...1000, using: &random)
        case 5: return Bool.random(using: &random)
        default: return NSNull()
        }
    }

    /// `[[[...{"k": value}...]]]`: `levels` brackets around a random value.
    static func nested(_ random: inout SeededRandom, levels: Int) -> Any {
        var document: Any = ["k": value(&random, depth: 3)]
        for level in 0..<levels { document = level % 3 == 0 ? ["n": document] : [document] }
        return document
    }

    @Test(arguments: [UInt64(20_261_205), 7, 4242])
    func endsWhereTheWriterEnded(seed: UInt64) throws {
        var random = SeededRandom(seed: seed)
        for round in 0..<300 {
            let levels =
                round % 10 == 0 ? Int.random(in: 60...140, using: &random) : Int.random(in: 0...5, using: &random)
            let document = Self.nested(&random, levels: levels)
            let data = try JSONSerialization.data(withJSONObject: document, options: [.fragmentsAllowed])
            let padded = data + Data(" ,\"tail\"".utf8)
            let end = try padded.withUnsafeBytes { try JSONSplitter.valueEnd($0, 0) }
            #expect(end == data.count, "seed \(seed) round \(round): \(String(decoding: data, as: UTF8.self))")
            // Cut short, the value has no end yet.
            let cut = data.prefix(data.count - 1)
            #expect(try cut.withUnsafeBytes { try JSONSplitter.valueEnd($0, 0) } == nil, "seed \(seed) round \(round)")
            // A closing bracket of the wrong kind is refused wherever it is, at any depth.
            var bytes = [UInt8](data)
            if let last = bytes.indices.last, bytes[last] == UInt8(ascii: "}") || bytes[last] == UInt8(ascii: "]") {
                bytes[last] = bytes[last] == UInt8(ascii: "}") ? UInt8(ascii: "]") : UInt8(ascii: "}")
                #expect(throws: JSONSplitter.Failure.self) {
                    try bytes.withUnsafeBytes { try JSONSplitter.valueEnd($0, 0) }
                }
            }
        }
    }

    @Test func stringsEndAtTheFirstUnescapedQuote() {
        let cases: [(String, Int?)] = [
            (#""""#, 2), (#""a\"b""#, 6), (#""a\\"b"#, 5), (#""a\\\"b""#, 8), (#""\\\\""#, 6), (#""abc"#, nil),
            (#""\""#, nil),
        ]
        for (text, end) in cases {
            #expect(Array(text.utf8).withUnsafeBytes { JSONSplitter.stringEnd($0, 0) } == end, "\(text)")
        }
    }

    /// What the collectors accept as a record, as `JSONRecords.fields` checks it.
    static func accepted(_ bytes: [UInt8]) -> Bool {
        (try? JSONRecords.fields(Data(bytes), wanted: ["id"])) != nil
    }

    @Test func recordsThatAreNotJSONAreRefusedWhereTheDecoderAloneLetThemPass() {
        let refused: [(String, [UInt8])] = [
            ("a comma before }", Array(#"{"id":"x","m":1,}"#.utf8)),
            ("a comma before ]", Array(#"{"id":"x","a":[1,2 , ]}"#.utf8)),
            ("two points", Array(#"{"id":"x","n":1.2.3}"#.utf8)),
            ("a leading zero", Array(#"{"id":"x","n":01}"#.utf8)), ("-01", Array(#"{"id":"x","n":-01}"#.utf8)),
            ("no digit after the point", Array(#"{"id":"x","n":1.}"#.utf8)),
            ("a bare minus", Array(#"{"id":"x","n":-}"#.utf8)), ("1e", Array(#"{"id":"x","n":1e}"#.utf8)),
            ("1E+", Array(#"{"id":"x","n":[1E+]}"#.utf8)),
            ("an unknown escape", Array(#"{"id":"x","s":"a\qb"}"#.utf8)),
            ("\\u without hex", Array(#"{"id":"x","s":"\uZZZZ"}"#.utf8)),
            ("a short \\u", Array(#"{"id":"x","s":"\u12"}"#.utf8)),
            ("a lone high surrogate", Array(#"{"id":"x","s":"\ud800 "}"#.utf8)),
            ("a lone low surrogate", Array(#"{"id":"x","s":"\udc00"}"#.utf8)),
            ("a high surrogate before a non-low", Array(#"{"id":"x","s":"\ud800\u0041"}"#.utf8)),
            ("a raw tab in a string", Array("{\"id\":\"x\",\"s\":\"a\tb\"}".utf8)),
            ("a raw line break in a string", Array("{\"id\":\"x\",\"s\":\"a\nb\"}".utf8)),
            ("a raw NUL in a key", Array("{\"id\":\"x\",\"a\u{0}\":1}".utf8)),
            ("Latin-1 in a string", Array(#"{"id":"x","s":"caf"#.utf8) + [0xE9] + Array(#""}"#.utf8)),
            ("a cut UTF-8 sequence", Array(#"{"id":"x","s":""#.utf8) + [0xE2, 0x82] + Array(#""}"#.utf8)),
            ("an encoded surrogate", Array(#"{"id":"x","s":""#.utf8) + [0xED, 0xA0, 0x80] + Array(#""}"#.utf8)),
        ]
        for (name, bytes) in refused {
            #expect(!Self.accepted(bytes), "\(name): \(String(decoding: bytes, as: UTF8.self))")
        }
        let valid: [String] = [
            #"{"id":"x","n":[0,-0,0.5,-1.25e-3,1E+9,10,1e400,123456789012345678901234567890]}"#,
            #"{"id":"x","s":"\u00e9\ud83d\ude00\u0000\"\\\/\b\f\n\r\t","é😀":"ü"}"#,
            "{ \"id\" : \"x\" ,\r\n\t\"a\" : [ ] , \"o\" : { } , \"t\" : [true, false, null] }",
        ]
        for text in valid { #expect(Self.accepted(Array(text.utf8)), "\(text)") }
    }

    /// What the collectors' validation checks on its own now that no `JSONDecoder` reads records first: the
    /// structure around the tokens, each case refused by Foundation's `JSONSerialization` as well.
    @Test func recordsWithoutJSONsStructureAreRefused() {
        let refused: [(String, String)] = [
            ("empty", ""), ("only whitespace", " \n"), ("no ':'", #"{"id" "x"}"#), ("'=' for ':'", #"{"id"="x"}"#),
            ("no ','", #"{"id":"x" "a":1}"#),
            ("a name that is not a string", #"{"id":"x",a:1}"#), ("a number as a name", #"{"id":"x",1:1}"#),
            ("a member without a value", #"{"id":"x","a":}"#), ("a member without a name", #"{"id":"x",:1}"#),
            ("two commas", #"{"id":"x",,"a":1}"#), ("a leading comma", #"{,"id":"x"}"#),
            ("an array's leading comma", #"{"id":"x","a":[,1]}"#), ("no ',' in an array", #"{"id":"x","a":[1 2]}"#),
            ("':' in an array", #"{"id":"x","a":[1:2]}"#), ("tru", #"{"id":"x","a":tru}"#),
            ("True", #"{"id":"x","a":True}"#), ("nul", #"{"id":"x","a":[nul]}"#), ("falsey", #"{"id":"x","a":falsey}"#),
            ("trux", #"{"id":"x","a":trux}"#), ("nuLL", #"{"id":"x","a":[nuLL]}"#),
            ("a bare word", #"{"id":"x","a":undefined}"#), ("NaN", #"{"id":"x","a":NaN}"#),
            ("a single quote", #"{"id":'x'}"#), ("not closed", #"{"id":"x""#), ("an array not closed", #"{"id":["x"}"#),
            ("one bracket too many", #"{"id":"x"}}"#), ("two values", #"{"id":"x"} {"id":"y"}"#),
            ("a value after the object", #"{"id":"x"} 1"#), ("a comment", #"{"id":"x"/* c */}"#),
            ("a mismatched bracket", #"{"id":["x"}]"#),
        ]
        for (name, text) in refused {
            #expect(!Self.accepted(Array(text.utf8)), "\(name): \(text)")
            #expect((try? JSONSerialization.jsonObject(with: Data(text.utf8))) == nil, "\(name): \(text)")
        }
    }

    /// Nesting: as deep as Foundation's readers allow (512 levels) and no deeper.
    @Test func nestingStopsWhereFoundationsReadersStop() throws {
        for levels in [1, 63, 64, 65, 200, 511, 512, 513, 600] {
            let text =
                #"{"id":"x","a":"# + String(repeating: "[", count: levels - 1) + "1"
                + String(repeating: "]", count: levels - 1) + "}"
            let foundation = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) != nil
            #expect(Self.accepted(Array(text.utf8)) == foundation, "\(levels) levels")
            #expect(foundation == (levels <= 512), "\(levels) levels")
        }
    }

    /// Seeded corruptions of valid records, each byte replaced, inserted or removed at random from JSON's own
    /// characters, against Foundation's `JSONSerialization`, which reads every value: both accept and refuse the
    /// same texts but for two differences of `JSONSerialization`, which accepts a ',' before a closing bracket (RFC
    /// 8259 does not) and refuses a number beyond a `Double` (RFC 8259 allows it).
    @Test(arguments: [UInt64(20_261_206), 11, 977])
    func acceptsWhatAStrictReaderAccepts(seed: UInt64) throws {
        var random = SeededRandom(seed: seed)
        let alphabet =
            Array(#"{}[],:"\/ubfnrt0123456789-+.eEaA"#.utf8) + [0x09, 0x0A, 0x00, 0x1F, 0xC3, 0xA9, 0xED, 0xFF]
        var refusedBoth = 0
        var acceptedBoth = 0
        for round in 0..<3_000 {
            let document = ["id": "indicator--\(round)", "v": Self.value(&random, depth: 3)] as [String: Any]
            var bytes = [UInt8](try JSONSerialization.data(withJSONObject: document))
            for _ in 0..<Int.random(in: 0...2, using: &random) {
                let at = Int.random(in: 0..<bytes.count, using: &random)
                switch Int.random(in: 0...2, using: &random) {
                case 0: bytes[at] = alphabet.randomElement(using: &random)!
                case 1: bytes.insert(alphabet.randomElement(using: &random)!, at: at)
                default: if bytes.count > 2 { bytes.remove(at: at) }
                }
            }
            let ours = Self.accepted(bytes)
            let strict = (try? JSONSerialization.jsonObject(with: Data(bytes))) is [String: Any]
            let text = String(decoding: bytes, as: UTF8.self)
            if ours == strict {
                if ours { acceptedBoth += 1 } else { refusedBoth += 1 }
                continue
            }
            let trailingComma =
                (try? Data(bytes).withRawBytes { raw throws(JSONSplitter.Failure) in try JSONSplitter.validate(raw) })
                == nil
                && text.range(of: #",[ \t\n\r]*[\]}]"#, options: .regularExpression) != nil
            let outOfRange = text.range(of: #"[0-9][eE][+]?[0-9]{3}"#, options: .regularExpression) != nil
            #expect(
                (strict && trailingComma) || (ours && outOfRange),
                "seed \(seed) round \(round): ours \(ours), JSONSerialization \(strict): \(text)")
        }
        // The corruptions reach both sides of the line.
        #expect(
            refusedBoth > 500 && acceptedBoth > 500, "seed \(seed): \(refusedBoth) refused, \(acceptedBoth) accepted")
    }
}
