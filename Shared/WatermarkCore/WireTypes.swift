import Foundation

/// The bodies the Storage Service and its clients exchange besides `Watermark`, `WatermarkRun`, `Lease` and
/// `WatermarkPage`: one definition each, encoded by one side and decoded by the other.

/// `{"error": {"code", "message", "holder"?, "expires_at"?}}`: every refusal of both services. The status is
/// the response's own, so it is not in the body.
public struct ErrorEnvelope: Codable, Sendable, Equatable {
    public struct Detail: Codable, Sendable, Equatable {
        public var code: String
        public var message: String
        /// Who holds the lease, for `lease_held`.
        public var holder: String?
        /// When that lease expires, for `lease_held`.
        public var expiresAt: Timestamp?

        public init(code: String, message: String, holder: String? = nil, expiresAt: Timestamp? = nil) {
            self.code = code
            self.message = message
            self.holder = holder
            self.expiresAt = expiresAt
        }

        enum CodingKeys: String, CodingKey {
            case code, message, holder
            case expiresAt = "expires_at"
        }
    }

    public var error: Detail

    public init(_ error: Detail) { self.error = error }

    /// The body of `error` (its status goes on the response line).
    public init(_ error: WatermarkError) {
        self.error = Detail(code: error.code, message: error.message, holder: error.holder, expiresAt: error.expiresAt)
    }
}

/// The body of `GET /api/v1/watermarks/{source_id}/history`.
public struct HistoryBody: Codable, Sendable, Equatable {
    public var sourceID: SourceID
    public var runs: [WatermarkRun]

    public init(sourceID: SourceID, runs: [WatermarkRun]) {
        self.sourceID = sourceID
        self.runs = runs
    }

    enum CodingKeys: String, CodingKey {
        case sourceID = "source_id"
        case runs
    }
}

/// The body of `POST /api/v1/watermarks/{source_id}/lease`. Decoding is the service's reading of it: a missing
/// or null `ttl_seconds` is 300, and a whole number written with a fraction (490.0, which JSON Schema counts as
/// an integer) is accepted.
public struct LeaseRequestBody: Codable, Sendable, Equatable {
    public static let defaultTTLSeconds: Int64 = 300

    public var owner: String
    public var ttlSeconds: Int64

    public init(owner: String, ttlSeconds: Int64) {
        self.owner = owner
        self.ttlSeconds = ttlSeconds
    }

    enum CodingKeys: String, CodingKey {
        case owner
        case ttlSeconds = "ttl_seconds"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        guard let owner = try? c.decodeIfPresent(String.self, forKey: .owner) else {
            throw WatermarkError.invalidBody("field \"owner\" is required: a string naming the collector instance")
        }
        // The rules check the range; what no lease can last (past an Int32, or an Int64) is refused here with their
        // words, so that `.seconds(_:)` cannot overflow. It was "must be at least 1" for 3,000,000,000.
        let outOfRange = WatermarkError.invalidBody(
            "field \"ttl_seconds\" must be from 1 to \(WatermarkPolicy().maxLeaseTTL.components.seconds)")
        let ttl: Int64
        if (try? c.decodeNil(forKey: .ttlSeconds)) ?? true {
            ttl = Self.defaultTTLSeconds
        } else if let whole = try? c.decode(Int64.self, forKey: .ttlSeconds) {
            ttl = whole
        } else if let number = try? c.decode(Double.self, forKey: .ttlSeconds), number.rounded() == number {
            guard abs(number) < 1e15 else { throw outOfRange }
            ttl = Int64(number)
        } else {
            throw WatermarkError.invalidBody("field \"ttl_seconds\" must be a whole number of seconds")
        }
        self.owner = owner
        self.ttlSeconds = ttl
        guard (1...Int64(Int32.max)).contains(ttl) else { throw outOfRange }
    }
}

extension JSONEncoder {
    /// How both services write the contract's JSON answers: keys sorted, slashes not escaped.
    public static func contract() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }
}
