/// Every refusal of the watermark API: an HTTP status, a stable snake_case code and a message that says
/// what was wrong and how to fix it.
///
/// The storage service renders it as `{"error": {"code", "message"}}`; the in-memory client throws the
/// very same values, so a caller cannot tell the two apart by their errors.
public struct WatermarkError: Error, Sendable, Equatable, Codable, CustomStringConvertible {
    /// The HTTP status it is answered with.
    public let statusCode: Int
    public let code: String
    public let message: String
    /// Who holds a lease, for `lease_held`.
    public var holder: String?
    /// When the lease held by `holder` expires, for `lease_held`.
    public var expiresAt: Timestamp?

    public init(status: Int, code: String, message: String, holder: String? = nil, expiresAt: Timestamp? = nil) {
        self.statusCode = status
        self.code = code
        self.message = message
        self.holder = holder
        self.expiresAt = expiresAt
    }

    public var description: String { "\(statusCode) \(code): \(message)" }

    enum CodingKeys: String, CodingKey {
        case statusCode = "status", code, message, holder
        case expiresAt = "expires_at"
    }
}

extension WatermarkError {
    // 400
    public static func invalidSourceID(_ text: String) -> WatermarkError {
        let shown = text.count > 140 ? String(text.prefix(140)) + "..." : text
        return WatermarkError(
            status: 400, code: "invalid_source_id",
            message: "source_id '\(shown)' is invalid: use 1 to 128 characters of A-Z a-z 0-9 . _ : - (not '.' or '..')"
        )
    }
    public static func invalidJSON(_ detail: String) -> WatermarkError {
        WatermarkError(status: 400, code: "invalid_json", message: "the request body is not valid JSON: \(detail)")
    }
    public static func invalidBody(_ detail: String) -> WatermarkError {
        WatermarkError(status: 400, code: "invalid_body", message: detail)
    }
    public static func invalidTimestamp(_ field: String, _ error: TimestampError) -> WatermarkError {
        WatermarkError(status: 400, code: "invalid_timestamp", message: "\(field): \(error.description)")
    }
    public static func invalidStatus(_ value: String) -> WatermarkError {
        WatermarkError(
            status: 400, code: "invalid_status",
            message: "status '\(value.prefix(64))' is not allowed: use \"success\" or \"failed\""
        )
    }
    public static let missingTimestamp = WatermarkError(
        status: 400, code: "missing_timestamp",
        message: "a \"success\" update needs \"timestamp\": the instant up to which data was collected"
    )
    /// A known path asked with a method it does not answer (both services).
    public static func methodNotAllowed(_ method: String, allowed: [String]) -> WatermarkError {
        WatermarkError(
            status: 405, code: "method_not_allowed",
            message: "method \(method.prefix(32)) is not allowed here; allowed: \(allowed.joined(separator: ", "))"
        )
    }
    public static func timestampInFuture(_ timestamp: Timestamp, tolerance: Duration) -> WatermarkError {
        WatermarkError(
            status: 400, code: "timestamp_in_future",
            message: "timestamp \(timestamp) is more than \(tolerance.components.seconds) s ahead of the server's "
                + "clock; check the collector's clock or the source's timestamps"
        )
    }
    public static func invalidParameter(_ name: String, _ detail: String) -> WatermarkError {
        WatermarkError(status: 400, code: "invalid_parameter", message: "query parameter '\(name)': \(detail)")
    }
    public static func invalidHeader(_ name: String, _ detail: String) -> WatermarkError {
        WatermarkError(status: 400, code: "invalid_header", message: "header \(name): \(detail)")
    }

    // 404
    public static func watermarkNotFound(_ id: SourceID) -> WatermarkError {
        WatermarkError(
            status: 404, code: "watermark_not_found",
            message: "no watermark for source '\(id)' (a first collection starts from the default lookback)"
        )
    }

    public static func leaseNotFound(_ id: SourceID) -> WatermarkError {
        WatermarkError(
            status: 404, code: "lease_not_found",
            message: "no live lease on source '\(id)' (never granted, released or expired)"
        )
    }

    // 409
    public static func watermarkRegression(stored: Timestamp, requested: Timestamp) -> WatermarkError {
        WatermarkError(
            status: 409, code: "watermark_regression",
            message: "timestamp \(requested) is older than the stored last_successful_timestamp \(stored); "
                + "add ?force=true for a deliberate backfill"
        )
    }
    public static func leaseHeld(_ lease: Lease) -> WatermarkError {
        WatermarkError(
            status: 409, code: "lease_held",
            message: "source '\(lease.sourceID)' is leased by '\(lease.owner)' until \(lease.expiresAt)",
            holder: lease.owner, expiresAt: lease.expiresAt
        )
    }
    public static func leaseRequired(_ id: SourceID) -> WatermarkError {
        WatermarkError(
            status: 409, code: "lease_required",
            message: "source '\(id)' is leased: send 'Lease-Token: <fencing_token>' of the live lease"
        )
    }
    public static func staleLease(_ id: SourceID, token: Int64) -> WatermarkError {
        WatermarkError(
            status: 409, code: "stale_lease",
            message: "Lease-Token \(token) is not the current lease of source '\(id)': another owner took over"
        )
    }
    public static let idempotencyKeyReused = WatermarkError(
        status: 409, code: "idempotency_key_reused",
        message: "this Idempotency-Key was already used with a different request; use a new key per update"
    )

    // 412
    public static func preconditionFailed(_ detail: String) -> WatermarkError {
        WatermarkError(status: 412, code: "precondition_failed", message: detail)
    }

    // 5xx
    public static func unavailable(_ detail: String) -> WatermarkError {
        WatermarkError(status: 503, code: "database_unavailable", message: "the database cannot be used: \(detail)")
    }
}
