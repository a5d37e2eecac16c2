import Foundation

/// Finds where JSON values begin and end in a buffer, following strings, escapes and brackets only, and checks
/// that a record is valid JSON (`validate`) without building any of its values. Offsets are indexes into the
/// buffer.
enum JSONSplitter {
    struct Failure: Error {
        var offset: Int
        var reason: String
    }

    static func isWhitespace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09
    }

    static func skipWhitespace(_ bytes: UnsafeRawBufferPointer, _ start: Int) -> Int {
        var index = start
        while index < bytes.count, isWhitespace(bytes[index]) { index += 1 }
        return index
    }

    /// Where the value starting at `start` ends (exclusive), or `nil` when the buffer ends before it does (a
    /// number at the very end counts as ended only if `complete`).
    static func valueEnd(_ bytes: UnsafeRawBufferPointer, _ start: Int, complete: Bool = true) throws(Failure) -> Int? {
        guard start < bytes.count else { return nil }
        let first = bytes[start]
        if first == UInt8(ascii: "\"") { return stringEnd(bytes, start) }
        if first != UInt8(ascii: "{") && first != UInt8(ascii: "[") {
            var index = start
            while index < bytes.count {
                let byte = bytes[index]
                if byte == UInt8(ascii: ",") || byte == UInt8(ascii: "]") || byte == UInt8(ascii: "}")
                    || byte == UInt8(ascii: ":") || isWhitespace(byte)
                {
                    break
                }
                if byte == UInt8(ascii: "{") || byte == UInt8(ascii: "[") || byte == UInt8(ascii: "\"") {
                    throw Failure(offset: index, reason: "unexpected \(Character(UnicodeScalar(byte)))")
                }
                index += 1
            }
            if index == start { throw Failure(offset: start, reason: "a value is missing") }
            return index < bytes.count || complete ? index : nil
        }
        // The open brackets, one bit a level (1: object), in a register: a heap-allocated stack per value was
        // a malloc for every record and every nested array in it. Deeper than 64 levels spills to `deeper`.
        var open: UInt64 = first == UInt8(ascii: "{") ? 1 : 0
        var depth = 1
        var deeper: [Bool] = []
        var index = start + 1
        while index < bytes.count {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\""):
                guard let end = stringEnd(bytes, index) else { return nil }
                index = end
                continue
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                if depth >= 64 { deeper.append(open >> 63 == 1) }
                open = open << 1 | (byte == UInt8(ascii: "{") ? 1 : 0)
                depth += 1
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                guard (open & 1 == 1) == (byte == UInt8(ascii: "}")) else {
                    throw Failure(offset: index, reason: "mismatched \(Character(UnicodeScalar(byte)))")
                }
                depth -= 1
                if depth == 0 { return index + 1 }
                open = open >> 1 | (depth >= 64 && deeper.removeLast() ? 1 << 63 : 0)
            default:
                break
            }
            index += 1
        }
        return nil
    }

    /// The end (after the closing quote) of the string whose opening quote is at `start`; `nil` if unclosed.
    /// Quotes are found with `memchr`; one is the end unless an odd number of backslashes escapes it.
    static func stringEnd(_ bytes: UnsafeRawBufferPointer, _ start: Int) -> Int? {
        guard let base = bytes.baseAddress else { return nil }
        var from = start + 1
        while from < bytes.count {
            guard let found = memchr(base + from, Int32(UInt8(ascii: "\"")), bytes.count - from) else { return nil }
            let quote = base.distance(to: UnsafeRawPointer(found))
            var backslashes = 0
            while quote - backslashes - 1 > start, bytes[quote - backslashes - 1] == UInt8(ascii: "\\") {
                backslashes += 1
            }
            if backslashes % 2 == 0 { return quote + 1 }
            from = quote + 1
        }
        return nil
    }

    /// Checks that `bytes` hold exactly one JSON value, whitespace around it allowed, as RFC 8259 writes it:
    /// brackets matched and nested at most `maxDepth` deep (512: as Foundation's reader allows), members as
    /// `"name": value` separated by `,` with none before a closing bracket, the literals spelled out, each string's
    /// escapes (a `\u` surrogate must be paired) and characters (no raw control character, UTF-8 throughout), each
    /// number's form (no leading zero, digits after `.` and the exponent). One pass that builds nothing:
    /// `JSONDecoder` read as the collectors' validator (it builds a value of every member first) was 16 % of a
    /// drop-folder run's CPU.
    static func validate(_ bytes: UnsafeRawBufferPointer, maxDepth: Int = 512) throws(Failure) {
        // The open brackets, one bit a level (1: object), as in `valueEnd`; beyond 64 levels they spill to `deeper`.
        var open: UInt64 = 0
        var depth = 0
        var deeper: [Bool] = []
        var nonASCII = false
        var index = skipWhitespace(bytes, 0)
        var expect = Expect.value
        while true {
            guard index < bytes.count else {
                guard expect == .end else { throw Failure(offset: index, reason: "the JSON text is cut off") }
                break
            }
            let byte = bytes[index]
            switch expect {
            case .value, .valueOrClose:
                switch byte {
                case UInt8(ascii: "\""):
                    index = try checkedStringEnd(bytes, index, nonASCII: &nonASCII)
                case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                    index = try checkedNumberEnd(bytes, index)
                case UInt8(ascii: "t"): index = try literalEnd(bytes, index, "true")
                case UInt8(ascii: "f"): index = try literalEnd(bytes, index, "false")
                case UInt8(ascii: "n"): index = try literalEnd(bytes, index, "null")
                case UInt8(ascii: "{"), UInt8(ascii: "["):
                    guard depth < maxDepth else {
                        throw Failure(offset: index, reason: "nested deeper than \(maxDepth) levels")
                    }
                    if depth >= 64 { deeper.append(open >> 63 == 1) }
                    let object = byte == UInt8(ascii: "{")
                    open = open << 1 | (object ? 1 : 0)
                    depth += 1
                    index = skipWhitespace(bytes, index + 1)
                    expect = object ? .nameOrClose : .valueOrClose
                    continue
                case UInt8(ascii: "]") where expect == .valueOrClose:
                    index += 1
                    close(&open, &depth, &deeper)
                default:
                    let reason = expect == .valueOrClose ? "a value or ']' expected" : "a value expected"
                    throw Failure(offset: index, reason: reason)
                }
            case .name, .nameOrClose:
                if byte == UInt8(ascii: "\"") {
                    index = skipWhitespace(bytes, try checkedStringEnd(bytes, index, nonASCII: &nonASCII))
                    guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else {
                        throw Failure(offset: index, reason: "':' expected after a member's name")
                    }
                    index = skipWhitespace(bytes, index + 1)
                    expect = .value
                    continue
                }
                guard byte == UInt8(ascii: "}"), expect == .nameOrClose else {
                    let reason = expect == .nameOrClose ? "a member's name or '}' expected" : "a member's name expected"
                    throw Failure(offset: index, reason: reason)
                }
                index += 1
                close(&open, &depth, &deeper)
            case .separatorOrClose:
                let object = open & 1 == 1
                if byte == UInt8(ascii: ",") {
                    index = skipWhitespace(bytes, index + 1)
                    expect = object ? .name : .value
                    continue
                }
                guard byte == (object ? UInt8(ascii: "}") : UInt8(ascii: "]")) else {
                    throw Failure(offset: index, reason: object ? "',' or '}' expected" : "',' or ']' expected")
                }
                index += 1
                close(&open, &depth, &deeper)
            case .end:
                throw Failure(offset: index, reason: "something follows the JSON value")
            }
            // A value ended: what may follow it depends on what holds it.
            index = skipWhitespace(bytes, index)
            expect = depth == 0 ? .end : .separatorOrClose
        }
        if nonASCII, String(validating: bytes, as: UTF8.self) == nil {
            throw Failure(offset: 0, reason: "not UTF-8")
        }
    }

    /// What `validate` expects next.
    private enum Expect {
        case value, valueOrClose, name, nameOrClose, separatorOrClose, end
    }

    /// Leaves the innermost bracket.
    @inline(__always)
    private static func close(_ open: inout UInt64, _ depth: inout Int, _ deeper: inout [Bool]) {
        depth -= 1
        open = open >> 1 | (depth >= 64 && deeper.removeLast() ? 1 << 63 : 0)
    }

    /// The end of the literal `word` (`true`, `false`, `null`) at `start`, which must be spelled out whole.
    private static func literalEnd(_ bytes: UnsafeRawBufferPointer, _ start: Int, _ word: StaticString) throws(Failure)
        -> Int
    {
        let length = word.utf8CodeUnitCount
        guard start + length <= bytes.count, memcmp(bytes.baseAddress! + start, word.utf8Start, length) == 0 else {
            throw Failure(offset: start, reason: "a value expected")
        }
        return start + length
    }

    /// After the closing quote of the string whose opening quote is at `start`, each escape and character checked.
    private static func checkedStringEnd(
        _ bytes: UnsafeRawBufferPointer, _ start: Int, nonASCII: inout Bool
    ) throws(Failure) -> Int {
        var index = start + 1
        while index < bytes.count {
            // Eight bytes at a time while none of them is a quote, a backslash, a control character or non-ASCII
            // (most of a record is such text): the byte-wise loop was most of this check's time.
            while index + 8 <= bytes.count, isPlainText(bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self)) {
                index += 8
            }
            guard index < bytes.count else { break }
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") { return index + 1 }
            if byte < 0x20 {
                throw Failure(offset: index, reason: "control character 0x\(String(byte, radix: 16)) inside a string")
            }
            if byte >= 0x80 { nonASCII = true }
            guard byte == UInt8(ascii: "\\") else {
                index += 1
                continue
            }
            guard index + 1 < bytes.count else { break }
            switch bytes[index + 1] {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                index += 2
            case UInt8(ascii: "u"):
                guard let unit = hex4(bytes, index + 2) else {
                    throw Failure(offset: index, reason: "\\u without four hexadecimal digits")
                }
                switch unit {
                case 0xD800...0xDBFF:
                    guard index + 7 < bytes.count, bytes[index + 6] == UInt8(ascii: "\\"),
                        bytes[index + 7] == UInt8(ascii: "u"), let low = hex4(bytes, index + 8),
                        (0xDC00...0xDFFF).contains(low)
                    else { throw Failure(offset: index, reason: "\\u surrogate without its pair") }
                    index += 12
                case 0xDC00...0xDFFF:
                    throw Failure(offset: index, reason: "\\u surrogate without its pair")
                default:
                    index += 6
                }
            default:
                throw Failure(offset: index, reason: "invalid escape inside a string")
            }
        }
        throw Failure(offset: start, reason: "a string is not closed")
    }

    /// Whether none of the eight bytes of `word` is `"`, `\\`, below 0x20 or above 0x7F (bit tricks of "Bit
    /// Twiddling Hacks": a byte's high bit is set in `x - 0x01...` and clear in `x` only where it was below the
    /// subtracted byte).
    @inline(__always)
    private static func isPlainText(_ word: UInt64) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let highs: UInt64 = 0x8080_8080_8080_8080
        let quote = word ^ (ones &* 0x22)
        let backslash = word ^ (ones &* 0x5C)
        let zeroQuote = (quote &- ones) & ~quote
        let zeroBackslash = (backslash &- ones) & ~backslash
        let control = (word &- ones &* 0x20) & ~word
        return (zeroQuote | zeroBackslash | control | word) & highs == 0
    }

    /// The value of the four hexadecimal digits at `start`, `nil` if there are not four.
    private static func hex4(_ bytes: UnsafeRawBufferPointer, _ start: Int) -> UInt16? {
        guard start + 4 <= bytes.count else { return nil }
        var value: UInt16 = 0
        for offset in 0..<4 {
            let byte = bytes[start + offset]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: return nil
            }
            value = value << 4 | UInt16(digit)
        }
        return value
    }

    /// The end of the number at `start`, which must have RFC 8259's form: `-`, then `0` or digits not starting
    /// with `0`, then optionally `.` and digits, then optionally `e` or `E`, a sign and digits.
    private static func checkedNumberEnd(_ bytes: UnsafeRawBufferPointer, _ start: Int) throws(Failure) -> Int {
        func isDigit(_ index: Int) -> Bool {
            index < bytes.count && bytes[index] >= UInt8(ascii: "0") && bytes[index] <= UInt8(ascii: "9")
        }
        func digits(from index: Int) throws(Failure) -> Int {
            guard isDigit(index) else { throw Failure(offset: start, reason: "a number without digits where due") }
            var end = index
            while isDigit(end) { end += 1 }
            return end
        }
        var index = start
        if bytes[index] == UInt8(ascii: "-") { index += 1 }
        if index < bytes.count, bytes[index] == UInt8(ascii: "0") {
            index += 1
        } else {
            index = try digits(from: index)
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") { index = try digits(from: index + 1) }
        if index < bytes.count, bytes[index] | 0x20 == UInt8(ascii: "e") {
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
                index += 1
            }
            index = try digits(from: index)
        }
        if index < bytes.count {
            switch bytes[index] {
            case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E"),
                UInt8(ascii: "+"), UInt8(ascii: "-"):
                throw Failure(offset: start, reason: "a number not in JSON's form")
            default:
                break
            }
        }
        return index
    }

    /// The ranges of the values of the members named `names` of the JSON object in `bytes` (already proven
    /// valid), `nil` if `bytes` is not an object. Names are compared as written, byte for byte.
    static func topLevelValues(_ names: [String], in bytes: UnsafeRawBufferPointer) -> [Range<Int>?]? {
        var found = [Range<Int>?](repeating: nil, count: names.count)
        var index = skipWhitespace(bytes, 0)
        guard index < bytes.count, bytes[index] == UInt8(ascii: "{") else { return nil }
        index = skipWhitespace(bytes, index + 1)
        while index < bytes.count, bytes[index] == UInt8(ascii: "\"") {
            guard let keyEnd = stringEnd(bytes, index) else { return found }
            let key = UnsafeRawBufferPointer(rebasing: bytes[(index + 1)..<(keyEnd - 1)])
            index = skipWhitespace(bytes, keyEnd)
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { return found }
            let valueStart = skipWhitespace(bytes, index + 1)
            guard let valueEnd = try? valueEnd(bytes, valueStart) else { return found }
            for (position, name) in names.enumerated() where name.utf8.count == key.count {
                if name.utf8.withContiguousStorageIfAvailable({ $0.elementsEqual(key) }) ?? name.utf8.elementsEqual(key)
                {
                    found[position] = valueStart..<valueEnd
                }
            }
            index = skipWhitespace(bytes, valueEnd)
            guard index < bytes.count, bytes[index] == UInt8(ascii: ",") else { return found }
            index = skipWhitespace(bytes, index + 1)
        }
        return found
    }

    /// The members of the object at `start`, which must be whole in the buffer: each key (unescaped, as
    /// written) with the range of its value.
    static func members(_ bytes: UnsafeRawBufferPointer, _ start: Int) throws(Failure) -> [(String, Range<Int>)] {
        var index = skipWhitespace(bytes, start)
        guard index < bytes.count, bytes[index] == UInt8(ascii: "{") else {
            throw Failure(offset: index, reason: "not a JSON object")
        }
        var members: [(String, Range<Int>)] = []
        index = skipWhitespace(bytes, index + 1)
        if index < bytes.count, bytes[index] == UInt8(ascii: "}") { return try trailing(bytes, index + 1, members) }
        while true {
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\""), let keyEnd = stringEnd(bytes, index) else {
                throw Failure(offset: index, reason: "a member name is missing")
            }
            let key = String(
                decoding: UnsafeRawBufferPointer(rebasing: bytes[(index + 1)..<(keyEnd - 1)]), as: UTF8.self)
            index = skipWhitespace(bytes, keyEnd)
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else {
                throw Failure(offset: index, reason: "':' is missing after \"\(key)\"")
            }
            let valueStart = skipWhitespace(bytes, index + 1)
            guard let valueEnd = try valueEnd(bytes, valueStart) else {
                throw Failure(offset: valueStart, reason: "the value of \"\(key)\" is cut off")
            }
            members.append((key, valueStart..<valueEnd))
            index = skipWhitespace(bytes, valueEnd)
            guard index < bytes.count else { throw Failure(offset: index, reason: "the object is not closed") }
            if bytes[index] == UInt8(ascii: "}") { return try trailing(bytes, index + 1, members) }
            guard bytes[index] == UInt8(ascii: ",") else { throw Failure(offset: index, reason: "',' or '}' expected") }
            index = skipWhitespace(bytes, index + 1)
        }
    }

    private static func trailing<T>(_ bytes: UnsafeRawBufferPointer, _ index: Int, _ value: T) throws(Failure) -> T {
        let end = skipWhitespace(bytes, index)
        guard end == bytes.count else { throw Failure(offset: end, reason: "something follows the JSON value") }
        return value
    }

    /// The elements of the array whose `[` is at `start`, which must be whole in the buffer.
    static func elements(_ bytes: UnsafeRawBufferPointer, _ start: Int) throws(Failure) -> [Range<Int>] {
        guard start < bytes.count, bytes[start] == UInt8(ascii: "[") else {
            throw Failure(offset: start, reason: "not an array")
        }
        var elements: [Range<Int>] = []
        var index = skipWhitespace(bytes, start + 1)
        if index < bytes.count, bytes[index] == UInt8(ascii: "]") { return elements }
        while true {
            guard let end = try valueEnd(bytes, index) else {
                throw Failure(offset: index, reason: "element \(elements.count) is cut off")
            }
            elements.append(index..<end)
            index = skipWhitespace(bytes, end)
            guard index < bytes.count else { throw Failure(offset: index, reason: "the array is not closed") }
            if bytes[index] == UInt8(ascii: "]") { return elements }
            guard bytes[index] == UInt8(ascii: ",") else { throw Failure(offset: index, reason: "',' or ']' expected") }
            index = skipWhitespace(bytes, index + 1)
        }
    }
}

extension Data {
    /// Runs `body` over the bytes (contiguous `Data` storage, no copy).
    /// Whether `byte` occurs, found with `memchr`: `Data`'s own `contains` walks its iterator a byte at a time,
    /// which was 17 % of the collector's CPU on a million records (every record is checked for line breaks).
    func containsByte(_ byte: UInt8) -> Bool {
        withUnsafeBytes { raw in
            guard let base = raw.baseAddress, !raw.isEmpty else { return false }
            return memchr(base, Int32(byte), raw.count) != nil
        }
    }

    func withRawBytes<T>(_ body: (UnsafeRawBufferPointer) throws(JSONSplitter.Failure) -> T) throws(JSONSplitter
        .Failure)
        -> T
    {
        let result: Result<T, JSONSplitter.Failure> = withUnsafeBytes { raw in
            do throws(JSONSplitter.Failure) { return .success(try body(raw)) } catch { return .failure(error) }
        }
        return try result.get()
    }
}
