/// The name of a data source: 1 to 128 characters of `A-Z a-z 0-9 . _ : -`, and not `.` or `..`.
///
/// The same rule holds on every endpoint and in every client, so a name that is accepted once is
/// accepted everywhere, and can also serve as a folder name in a collector's sink.
public struct SourceID: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    public let rawValue: String

    public static let maxLength = 128

    public init(_ rawValue: String) throws(WatermarkError) {
        guard Self.isValid(rawValue) else { throw .invalidSourceID(rawValue) }
        self.rawValue = rawValue
    }

    public static func isValid(_ text: String) -> Bool {
        let bytes = text.utf8
        guard (1...maxLength).contains(bytes.count), text != ".", text != ".." else { return false }
        return bytes.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: ":"),
                UInt8(ascii: "-"):
                return true
            default:
                return false
            }
        }
    }

    public var description: String { rawValue }

    public static func < (lhs: SourceID, rhs: SourceID) -> Bool {
        // Byte order, the same as SQLite's BINARY collation, so every store pages identically.
        lhs.rawValue.utf8.lexicographicallyPrecedes(rhs.rawValue.utf8)
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        try self.init(text)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}
