import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import NIOFoundationCompat
import WatermarkCore

extension HTTPField.Name {
    static let idempotencyKey = HTTPField.Name("Idempotency-Key")!
    static let leaseToken = HTTPField.Name("Lease-Token")!
    static let idempotentReplayed = HTTPField.Name("Idempotent-Replayed")!
    static let reason = HTTPField.Name("X-Reason")!
}

extension HTTPFields {
    /// The value of the field `name`, as `self[name]` gives it, without joining when the field is there once (the usual
    /// case): `self[name]` joins the values of every field of that name through the generic `joined(separator:)`, most
    /// of the 2.7 % of the request threads' CPU that reading the two headers of a PUT's body cost (`perf`, 64
    /// connections). A field sent more than once is joined as before.
    func value(_ name: HTTPField.Name) -> String? {
        var value: String?
        for field in self where field.name == name {
            guard value == nil else { return self[name] }
            value = field.value
        }
        return value
    }
}

extension Request {
    /// Reads the body as JSON into `T`, refusing non-JSON content types (415), bodies over the limit
    /// (413) and malformed JSON (400) with the contract's errors. `T`'s own decoder may throw a
    /// `WatermarkError` naming the field at fault; it passes through unchanged.
    mutating func decodeJSON<T: Decodable>(_ type: T.Type, limit: Int) async throws -> T {
        // What clients send is checked as is first: splitting and lowercasing every content type cost more than the
        // check itself.
        if let contentType = headers.value(.contentType), contentType != "application/json" {
            let mediaType =
                contentType.split(separator: ";").first.map { String($0).trimmingWhitespace().lowercased() }
                ?? ""
            guard
                mediaType == "application/json" || (mediaType.hasPrefix("application/") && mediaType.hasSuffix("+json"))
            else { throw WatermarkError.unsupportedMediaType(contentType) }
        }
        if let length = headers.value(.contentLength).flatMap({ Int($0) }), length > limit {
            throw WatermarkError.payloadTooLarge(limit: limit)
        }
        let buffer: ByteBuffer
        do {
            buffer = try await collectBody(upTo: limit)
        } catch let error as HTTPError where error.status == .contentTooLarge {
            throw WatermarkError.payloadTooLarge(limit: limit)
        }
        guard buffer.readableBytes > 0 else { throw WatermarkError.invalidJSON("the body is empty") }
        do {
            return try Self.jsonDecoder.decode(T.self, from: buffer)
        } catch let error as WatermarkError {
            throw error
        } catch DecodingError.dataCorrupted(let context) where context.codingPath.isEmpty {
            throw WatermarkError.invalidJSON(Self.describe(context))
        } catch DecodingError.typeMismatch(_, let context) where context.codingPath.isEmpty {
            throw WatermarkError.invalidBody("the body must be a JSON object")
        } catch let error as DecodingError {
            throw WatermarkError.invalidBody(Self.describe(error))
        }
    }

    /// One decoder for every request: it has no state between calls.
    private static let jsonDecoder = JSONDecoder()

    private static func describe(_ context: DecodingError.Context) -> String {
        let underlying = (context.underlyingError as? NSError)?.userInfo[NSDebugDescriptionErrorKey] as? String
        return underlying ?? context.debugDescription
    }

    private static func describe(_ error: DecodingError) -> String {
        switch error {
        case .typeMismatch(_, let context), .valueNotFound(_, let context), .dataCorrupted(let context):
            let field = context.codingPath.map(\.stringValue).joined(separator: ".")
            return "field \"\(field)\": \(context.debugDescription)"
        case .keyNotFound(let key, _):
            return "field \"\(key.stringValue)\" is required"
        @unknown default:
            return "the body does not have the expected shape"
        }
    }

    /// A query parameter, percent-decoded; `nil` when absent.
    func query(_ name: String) -> String? {
        uri.queryParameters[name[...]].map(String.init)
    }

    /// A whole-number query parameter within `range`, or `fallback` when absent.
    func intQuery(_ name: String, default fallback: Int, in range: ClosedRange<Int>) throws -> Int {
        guard let text = query(name) else { return fallback }
        guard let value = Int(text), range.contains(value) else {
            throw WatermarkError.invalidParameter(
                name, "'\(text.prefix(32))' is not a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return value
    }

    /// `true`/`false` (also `1`/`0`), or `false` when absent.
    func boolQuery(_ name: String) throws -> Bool {
        switch query(name)?.lowercased() {
        case nil, "false", "0": return false
        case "true", "1", "": return true
        case let other?: throw WatermarkError.invalidParameter(name, "'\(other.prefix(32))' is not true or false")
        }
    }

    /// `If-Match: "<version>"`, `If-Match: *` or `If-None-Match: *`.
    func writePrecondition() throws -> WritePrecondition? {
        let ifMatch = headers.value(.ifMatch)?.trimmingWhitespace()
        let ifNoneMatch = headers.value(.ifNoneMatch)?.trimmingWhitespace()
        switch (ifMatch, ifNoneMatch) {
        case (nil, nil):
            return nil
        case (let match?, let noneMatch?):
            // RFC 9110 evaluates If-Match, then If-None-Match: "this version" and "absent" never both hold.
            _ = try Self.ifMatchPrecondition(match)
            guard noneMatch == "*" else {
                throw WatermarkError.invalidHeader("If-None-Match", "only '*' (create only) is supported on writes")
            }
            throw WatermarkError.preconditionFailed(
                "If-Match and If-None-Match: * cannot both hold (the source cannot exist and be absent)")
        case (nil, let value?):
            guard value == "*" else {
                throw WatermarkError.invalidHeader("If-None-Match", "only '*' (create only) is supported on writes")
            }
            return .absent
        case (let value?, nil):
            return try Self.ifMatchPrecondition(value)
        }
    }

    /// `If-Match: "3"` (the ETag), or the bare version `3` as some clients send it, or `*`. A version that
    /// cannot exist (`"0"`) is valid and simply never matches (412).
    private static func ifMatchPrecondition(_ value: String) throws -> WritePrecondition {
        if value == "*" { return .exists }
        let quoted = value.count >= 3 && value.first == "\"" && value.last == "\""
        let digits = quoted ? value.dropFirst().dropLast() : Substring(value)
        guard digits.count <= 18, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber),
            let version = Int64(digits)
        else {
            throw WatermarkError.invalidHeader("If-Match", "expected a version in quotes, like \"3\" (the ETag), or *")
        }
        return .version(version)
    }

    /// `Lease-Token: <fencing_token>`.
    func leaseToken() throws -> Int64? {
        guard let text = headers.value(.leaseToken)?.trimmingWhitespace() else { return nil }
        // Exactly what the document's pattern says: 1 to 18 decimal digits, no sign, no leading zero.
        let digits = text.utf8
        guard (1...18).contains(digits.count), digits.first != UInt8(ascii: "0"),
            digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }), let token = Int64(text)
        else {
            throw WatermarkError.invalidHeader(
                "Lease-Token", "expected the lease's fencing_token: 1 to 18 digits, like 3, no sign or leading zero")
        }
        return token
    }

    /// `X-Reason: <text>`, why a change is made, for the history: 1 to `Attribution.maxReasonLength` visible ASCII
    /// characters and spaces as sent. Text that is percent-encoded UTF-8 (how clients send other scripts) is kept
    /// decoded; any other text is kept as sent.
    func reason() throws -> String? {
        guard let raw = headers.value(.reason) else { return nil }
        let text = raw.trimmingWhitespace()
        guard (1...Attribution.maxReasonLength).contains(text.utf8.count),
            text.utf8.allSatisfy({ (0x20...0x7E).contains($0) })
        else {
            throw WatermarkError.invalidHeader(
                "X-Reason",
                "use 1 to \(Attribution.maxReasonLength) visible ASCII characters and spaces (percent-encode others)")
        }
        guard text.contains("%"), let decoded = text.removingPercentEncoding,
            decoded.unicodeScalars.allSatisfy({ $0.value >= 0x20 && !(0x7F...0x9F).contains($0.value) })
        else { return text }
        return decoded
    }

    /// `Idempotency-Key: <key>`.
    func idempotencyKey() throws -> String? {
        guard let key = headers.value(.idempotencyKey) else { return nil }
        try WatermarkRules.validateIdempotencyKey(key)
        return key
    }
}
