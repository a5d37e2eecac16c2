import Foundation
import WatermarkCore

/// How the collectors read sources' JSON: records are kept as the bytes the source sent (the sink stores
/// them as they are), each proven valid JSON by `JSONSplitter.validate` before its bytes reach the sink, and only
/// the few fields a collector needs (id, times) are read.
///
/// Finding where each record starts and ends inside an envelope, a bundle or a file is `JSONSplitter`'s job:
/// it follows strings and brackets only, and never interprets a value.
enum JSONRecords {
    /// The fields `wanted` of one record: `bytes` must be one JSON object nested at most `maxDepth` deep, which
    /// `JSONSplitter.validate` proves; the fields are then found among the object's top-level members.
    static func fields(_ bytes: Data, wanted: [String], maxDepth: Int = 512) throws(CollectorError) -> RecordFields {
        do {
            try bytes.withRawBytes { raw throws(JSONSplitter.Failure) in
                try JSONSplitter.validate(raw, maxDepth: maxDepth)
            }
        } catch {
            throw .malformed("is not valid JSON: \(error.reason) at byte \(error.offset) (\(snippet(bytes)))")
        }
        let found: [Range<Int>?]? = bytes.withUnsafeBytes { raw in JSONSplitter.topLevelValues(wanted, in: raw) }
        guard let found else { throw .malformed("is not a JSON object (\(snippet(bytes)))") }
        let start = bytes.startIndex
        return RecordFields(
            names: wanted,
            values: found.map { range in
                range.map { FieldValue(json: bytes[(start + $0.lowerBound)..<(start + $0.upperBound)]) }
            })
    }

    /// The record on one line, as the sink's NDJSON needs it: in valid JSON a line break can only be whitespace
    /// between tokens (never inside a string), so removing them keeps the record's meaning and every other byte.
    static func oneLine(_ bytes: Data) -> Data {
        guard bytes.containsByte(0x0A) || bytes.containsByte(0x0D) else { return bytes }
        return bytes.withUnsafeBytes { raw in Data(raw.filter { $0 != 0x0A && $0 != 0x0D }) }
    }

    /// Reads the fields of many records on every core: chunks of `records` go to child tasks. `label(i)` names
    /// record `i` in an error ("a.ndjson line 3").
    static func fields(
        of records: [Data], wanted: [String], label: @Sendable @escaping (Int) -> String
    ) async throws(CollectorError) -> [RecordFields] {
        let workers = records.count >= 256 ? max(1, min(ProcessInfo.processInfo.activeProcessorCount, 8)) : 1
        let chunk = (records.count + workers - 1) / max(workers, 1)
        let decodeChunk: @Sendable (Range<Int>) -> Result<[RecordFields], CollectorError> = { range in
            var out: [RecordFields] = []
            out.reserveCapacity(range.count)
            for index in range {
                do throws(CollectorError) {
                    out.append(try fields(records[index], wanted: wanted))
                } catch {
                    guard case .malformed(let detail) = error else { return .failure(error) }
                    return .failure(.malformed("\(label(index)) \(detail)"))
                }
            }
            return .success(out)
        }
        if workers == 1 { return try decodeChunk(0..<records.count).get() }
        let results = await withTaskGroup(of: (Int, Result<[RecordFields], CollectorError>).self) { group in
            for worker in 0..<workers {
                let range = (worker * chunk)..<min(records.count, (worker + 1) * chunk)
                if range.isEmpty { continue }
                group.addTask { (worker, decodeChunk(range)) }
            }
            var results: [(Int, Result<[RecordFields], CollectorError>)] = []
            for await result in group { results.append(result) }
            return results.sorted { $0.0 < $1.0 }
        }
        var all: [RecordFields] = []
        all.reserveCapacity(records.count)
        for (_, result) in results { all += try result.get() }  // the first failing chunk in record order
        return all
    }

    /// One JSON value of an envelope (`more`, `next`), `nil` when it is not valid JSON.
    static func value(_ bytes: Data) -> FieldValue? {
        try? JSONDecoder().decode(FieldValue.self, from: bytes)
    }

    /// The top-level members of an envelope, by name, and the envelope's bytes; `what` names it in errors.
    static func envelope(_ body: Data, what: String) throws(CollectorError) -> [String: Range<Int>] {
        do {
            let members = try body.withRawBytes { bytes throws(JSONSplitter.Failure) in
                try JSONSplitter.members(bytes, 0)
            }
            return Dictionary(members.map { ($0.0, $0.1) }, uniquingKeysWith: { $1 })
        } catch {
            throw .malformed("\(what) is not valid JSON: \(error.reason) at byte \(error.offset) (\(snippet(body)))")
        }
    }

    /// The records of the envelope member `name` (`objects`, `results`), each as its own bytes: none when the
    /// member is absent or null.
    static func records(
        _ name: String, of body: Data, envelope: [String: Range<Int>], what: String
    ) throws(CollectorError) -> [Data] {
        // `null` is told by its bytes: decoding the member to compare it with null scanned the whole array once
        // more (13 % of the CPU of a TAXII run); `elements` checks the array itself.
        guard let range = envelope[name], body[range].elementsEqual("null".utf8) == false else { return [] }
        guard let list = try elements(of: body, at: range, what: what) else {
            throw .malformed("\"\(name)\" in \(what) is not an array of objects")
        }
        return list
    }

    /// The elements of the array at `range` of `body` (an envelope's `objects`), each as its own bytes.
    static func elements(of body: Data, at range: Range<Int>, what: String) throws(CollectorError) -> [Data]? {
        do {
            return try body.withRawBytes { bytes throws(JSONSplitter.Failure) -> [Data]? in
                let slice = UnsafeRawBufferPointer(rebasing: bytes[range])
                guard slice.first == UInt8(ascii: "[") else { return nil }
                return try JSONSplitter.elements(slice, 0).map { Data(slice[$0]) }
            }
        } catch {
            throw .malformed("\(what) is not valid JSON: \(error.reason)")
        }
    }

    /// The beginning of a payload for an error message, on one line.
    static func snippet(_ data: Data, limit: Int = 80) -> String {
        let text = String(decoding: data.prefix(limit), as: UTF8.self)
            .replacingOccurrences(of: "\n", with: " ").replacingOccurrences(of: "\r", with: " ")
        if data.isEmpty { return "empty body" }
        return "starts with \"\(text)\"" + (data.count > limit ? "..." : "")
    }
}

/// The fields a collector asked for of one record.
struct RecordFields: Sendable {
    /// The names asked for, and each one's value (`nil` when the record has no such member).
    var names: [String]
    var values: [FieldValue?]

    subscript(name: String) -> FieldValue? {
        guard let index = names.firstIndex(of: name) else { return nil }
        return values[index]
    }

    /// The field as text: a string, or a number as written (`"id": 42` is `"42"`).
    func text(_ name: String) -> String? {
        switch self[name] {
        case .string(let text), .number(let text): text
        default: nil
        }
    }

    /// The field when it is a string.
    func string(_ name: String) -> String? {
        if case .string(let text) = self[name] { return text }
        return nil
    }

    func has(_ name: String) -> Bool { self[name] != nil }

    /// An RFC 3339 timestamp field, `nil` when absent or not a timestamp.
    func timestamp(_ name: String) -> Timestamp? {
        string(name).flatMap { try? Timestamp(rfc3339: $0) }
    }
}

/// One field: what the collectors can use of it.
enum FieldValue: Decodable, Sendable, Equatable {
    case string(String)
    case number(String)
    case bool(Bool)
    case null
    /// An object or an array.
    case other

    /// The value of already validated JSON `bytes`: a string without escapes is taken as it is, one with
    /// escapes is unescaped by `JSONDecoder`, a number is kept as written.
    init(json bytes: Data) {
        guard let first = bytes.first else {
            self = .null
            return
        }
        switch first {
        case UInt8(ascii: "\""):
            if !bytes.containsByte(UInt8(ascii: "\\")) {
                self = .string(String(decoding: bytes.dropFirst().dropLast(), as: UTF8.self))
            } else {
                self = (try? JSONDecoder().decode(String.self, from: bytes)).map(FieldValue.string) ?? .other
            }
        case UInt8(ascii: "t"): self = .bool(true)
        case UInt8(ascii: "f"): self = .bool(false)
        case UInt8(ascii: "n"): self = .null
        case UInt8(ascii: "{"), UInt8(ascii: "["): self = .other
        default: self = .number(String(decoding: bytes, as: UTF8.self))
        }
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let text = try? container.decode(String.self) {
            self = .string(text)
        } else if let flag = try? container.decode(Bool.self) {
            self = .bool(flag)
        } else if let integer = try? container.decode(Int64.self) {
            self = .number(String(integer))
        } else if let number = try? container.decode(Double.self) {
            self = .number("\(number)")
        } else {
            self = .other
        }
    }
}
