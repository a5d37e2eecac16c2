import Foundation
import WatermarkCore

/// Parsing helpers shared by the collectors: sources hand us arbitrary JSON objects, and the sink keeps them
/// as they were, so records are handled as `JSONSerialization` dictionaries and written back compactly.
enum JSONRecords {
    /// Parses a JSON document that must be an object.
    static func object(from data: Data, what: String) throws(CollectorError) -> [String: Any] {
        let value: Any
        do {
            value = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        } catch {
            throw .malformed("\(what) is not valid JSON (\(snippet(data)))")
        }
        guard let object = value as? [String: Any] else {
            throw .malformed("\(what) is not a JSON object (\(snippet(data)))")
        }
        return object
    }

    /// The records of a `.json` document: an object, an array of objects, or a STIX bundle's `objects`.
    static func records(fromDocument data: Data, what: String) throws(CollectorError) -> [[String: Any]] {
        let value: Any
        do {
            value = try JSONSerialization.jsonObject(with: data, options: [])
        } catch {
            throw .malformed("\(what) is not valid JSON (\(snippet(data)))")
        }
        if let array = value as? [Any] {
            return try array.enumerated().map { (index, element) throws(CollectorError) in
                guard let object = element as? [String: Any] else {
                    throw .malformed("\(what): element \(index) is not a JSON object")
                }
                return object
            }
        }
        guard let object = value as? [String: Any] else {
            throw .malformed("\(what) is neither an object nor an array")
        }
        if object["type"] as? String == "bundle" {
            guard let objects = object["objects"] else { return [] }
            guard let list = objects as? [[String: Any]] else {
                throw .malformed("\(what): the bundle's \"objects\" is not an array of objects")
            }
            return list
        }
        return [object]
    }

    /// The records of a `.ndjson` document: one object per non-empty line.
    static func records(fromLines data: Data, what: String) throws(CollectorError) -> [[String: Any]] {
        var result: [[String: Any]] = []
        var lineNumber = 0
        for line in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNumber += 1
            let trimmed = line.drop { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: "\t") }
            if trimmed.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: "\t") }) {
                continue
            }
            result.append(try object(from: Data(line), what: "\(what) line \(lineNumber)"))
        }
        return result
    }

    /// Compact one-line JSON of a record (keys sorted, so the same object always gives the same bytes).
    static func encode(_ object: [String: Any], what: String) throws(CollectorError) -> Data {
        do {
            return try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        } catch {
            throw .malformed("\(what) cannot be re-encoded as JSON")
        }
    }

    /// An RFC 3339 timestamp field of a record, `nil` when absent or not a timestamp.
    static func timestamp(_ object: [String: Any], _ field: String) -> Timestamp? {
        guard let text = object[field] as? String else { return nil }
        return try? Timestamp(rfc3339: text)
    }

    /// Parses RFC 3339, or a naive date-time (no offset) as UTC, e.g. OTX's `2024-01-01T12:00:00.123000`.
    ///
    /// Adds the `Z` itself rather than relying on `Timestamp(rfc3339:assumeUTC:)`, which in this version
    /// refuses a naive value at the end of the text.
    static func naiveUTC(_ text: String) throws(TimestampError) -> Timestamp {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard trimmed.count >= 19 else { return try Timestamp(rfc3339: trimmed) }
        let time = trimmed.dropFirst(19)  // after YYYY-MM-DDTHH:MM:SS
        let hasOffset = time.contains { $0 == "Z" || $0 == "z" || $0 == "+" || $0 == "-" }
        var normalised = hasOffset ? trimmed : trimmed + "Z"
        if normalised.count > 10 {
            let index = normalised.index(normalised.startIndex, offsetBy: 10)
            if normalised[index] == " " { normalised.replaceSubrange(index...index, with: "T") }
        }
        return try Timestamp(rfc3339: normalised)
    }

    /// The beginning of a payload for an error message, on one line.
    static func snippet(_ data: Data, limit: Int = 80) -> String {
        let text = String(decoding: data.prefix(limit), as: UTF8.self)
            .replacingOccurrences(of: "\n", with: " ").replacingOccurrences(of: "\r", with: " ")
        if data.isEmpty { return "empty body" }
        return "starts with \"\(text)\"" + (data.count > limit ? "..." : "")
    }
}
