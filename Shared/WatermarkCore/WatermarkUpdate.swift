/// The body of `PUT /api/v1/watermarks/{source_id}`.
///
/// Decoding validates everything that can be checked without the stored state, and throws
/// `WatermarkError` (never a raw `DecodingError`) so the message names the field at fault.
public struct WatermarkUpdate: Sendable, Equatable, Codable {
    public var timestamp: Timestamp?
    public var status: RunStatus
    public var errorMessage: String?
    public var recordsCollected: Int64?

    public static let maxErrorMessageLength = 16_384

    /// `text` made an error message that every store keeps as sent: each NUL becomes U+FFFD (the replacement
    /// character) and the text is cut to `limit` code points (at most `maxErrorMessageLength`). For callers that report
    /// a failure in words they do not control, such as a feed's answer, so that the failure is recorded rather than
    /// refused.
    public static func errorMessage(_ text: String, limit: Int = maxErrorMessageLength) -> String {
        let cut = text.unicodeScalars.prefix(max(0, min(limit, maxErrorMessageLength)))
        guard cut.contains("\u{0}") else { return String(cut) }
        var cleaned = String.UnicodeScalarView()
        cleaned.append(contentsOf: cut.lazy.map { $0 == "\u{0}" ? "\u{FFFD}" : $0 })
        return String(cleaned)
    }

    /// The rules an update must keep whatever is stored: the one check the service (after decoding), every store (as
    /// it applies the rules), the mock client and the manager (before queueing) all run. An error message holds no
    /// NUL and at most `maxErrorMessageLength` characters, counted as JSON Schema's `maxLength` counts them (Unicode
    /// code points), not bytes.
    public func validate() throws(WatermarkError) {
        if let errorMessage, errorMessage.unicodeScalars.count > Self.maxErrorMessageLength {
            throw WatermarkError.invalidBody(
                "field \"error_message\" is over \(Self.maxErrorMessageLength) characters")
        }
        // SQLite took the text up to its first NUL (an acknowledged "a\u0000b" was read back as "a") and PostgreSQL's
        // text cannot hold one: refused, where both stores would otherwise differ from what was answered.
        if let errorMessage, errorMessage.utf8.contains(0) {
            throw WatermarkError.invalidBody("field \"error_message\" must not contain NUL (\\u0000)")
        }
        if let records = recordsCollected, records < 0 {
            throw WatermarkError.invalidBody("field \"records_collected\" must not be negative")
        }
        if status == .success, timestamp == nil { throw WatermarkError.missingTimestamp }
    }

    public init(
        timestamp: Timestamp?, status: RunStatus, errorMessage: String? = nil, recordsCollected: Int64? = nil
    ) {
        self.timestamp = timestamp
        self.status = status
        self.errorMessage = errorMessage
        self.recordsCollected = recordsCollected
    }

    /// A successful run that collected up to `timestamp`.
    public static func success(_ timestamp: Timestamp, records: Int64? = nil) -> WatermarkUpdate {
        WatermarkUpdate(timestamp: timestamp, status: .success, recordsCollected: records)
    }

    /// A failed run; the stored `last_successful_timestamp` stays where it was.
    public static func failed(_ message: String, records: Int64? = nil) -> WatermarkUpdate {
        WatermarkUpdate(timestamp: nil, status: .failed, errorMessage: message, recordsCollected: records)
    }

    enum CodingKeys: String, CodingKey {
        case timestamp, status
        case errorMessage = "error_message"
        case recordsCollected = "records_collected"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func field<T: Decodable>(_ type: T.Type, _ key: CodingKeys, _ expected: String) throws -> T? {
            do {
                return try c.decodeIfPresent(type, forKey: key)
            } catch {
                throw WatermarkError.invalidBody("field \"\(key.rawValue)\" must be \(expected)")
            }
        }
        guard let statusText = try field(String.self, .status, "a string") else {
            throw WatermarkError.invalidBody("field \"status\" is required: \"success\" or \"failed\"")
        }
        guard let status = RunStatus(rawValue: statusText) else { throw WatermarkError.invalidStatus(statusText) }
        self.status = status
        if let text = try field(String.self, .timestamp, "an RFC 3339 string") {
            do {
                timestamp = try Timestamp(rfc3339: text)
            } catch {
                throw WatermarkError.invalidTimestamp("timestamp", error)
            }
        } else {
            timestamp = nil
        }
        errorMessage = try field(String.self, .errorMessage, "a string or null")
        recordsCollected = try field(Int64.self, .recordsCollected, "a whole number")
        try validate()
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(timestamp, forKey: .timestamp)
        try c.encode(status, forKey: .status)
        try c.encode(errorMessage, forKey: .errorMessage)
        try c.encodeIfPresent(recordsCollected, forKey: .recordsCollected)
    }
}
