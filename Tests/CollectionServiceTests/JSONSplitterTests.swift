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
        switch depth > 0 ? Int.random(in: 0...5, using: &random) : Int.random(in: 3...5, using: &random) {
        case 0, 1:
            var object: [String: Any] = [:]
            for _ in 0..<Int.random(in: 0...3, using: &random) {
                object[string(&random)] = value(&random, depth: depth - 1)
            }
            return object
        case 2: return (0..<Int.random(in: 0...3, using: &random)).map { _ in value(&random, depth: depth - 1) }
        case 3: return string(&random)
        case 4: return Int.random(in: -1000...1000, using: &random)
        default: return Bool.random(using: &random)
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
}
