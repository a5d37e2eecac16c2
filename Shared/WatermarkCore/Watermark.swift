/// The outcome of one collection run.
public enum RunStatus: String, Sendable, Codable, CaseIterable {
    case success
    case failed
}

/// Per data source, the instant up to which data has been collected, and what the last run did.
///
/// Encoded with the field names of the original service; absent values are written as `null`, never
/// left out, so clients can rely on every key being present.
public struct Watermark: Sendable, Equatable, Codable {
    public var sourceID: SourceID
    /// The newest instant collected successfully; `nil` until a run succeeds.
    public var lastSuccessfulTimestamp: Timestamp?
    /// The server's clock at the last accepted update.
    public var lastRunTimestamp: Timestamp
    public var status: RunStatus
    /// Records collected by the last run.
    public var recordsCollected: Int64
    public var errorMessage: String?
    /// Grows by exactly one with every accepted update; the `ETag` is `"<version>"`.
    public var version: Int64
    /// Failed runs since the last success.
    public var consecutiveFailures: Int64
    public var createdAt: Timestamp

    public init(
        sourceID: SourceID, lastSuccessfulTimestamp: Timestamp?, lastRunTimestamp: Timestamp, status: RunStatus,
        recordsCollected: Int64, errorMessage: String?, version: Int64, consecutiveFailures: Int64,
        createdAt: Timestamp
    ) {
        self.sourceID = sourceID
        self.lastSuccessfulTimestamp = lastSuccessfulTimestamp
        self.lastRunTimestamp = lastRunTimestamp
        self.status = status
        self.recordsCollected = recordsCollected
        self.errorMessage = errorMessage
        self.version = version
        self.consecutiveFailures = consecutiveFailures
        self.createdAt = createdAt
    }

    /// The HTTP entity tag of this version.
    public var etag: String { "\"\(version)\"" }

    /// Stale: no success yet, or the last success is older than `cutoff`.
    public func isStale(before cutoff: Timestamp) -> Bool {
        guard let last = lastSuccessfulTimestamp else { return true }
        return last < cutoff
    }

    enum CodingKeys: String, CodingKey {
        case sourceID = "source_id"
        case lastSuccessfulTimestamp = "last_successful_timestamp"
        case lastRunTimestamp = "last_run_timestamp"
        case status
        case recordsCollected = "records_collected"
        case errorMessage = "error_message"
        case version
        case consecutiveFailures = "consecutive_failures"
        case createdAt = "created_at"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(sourceID.rawValue, forKey: .sourceID)
        try c.encodeText(lastSuccessfulTimestamp?.description, forKey: .lastSuccessfulTimestamp)
        try c.encode(lastRunTimestamp.description, forKey: .lastRunTimestamp)
        try c.encode(status.rawValue, forKey: .status)
        try c.encode(recordsCollected, forKey: .recordsCollected)
        try c.encodeText(errorMessage, forKey: .errorMessage)
        try c.encode(version, forKey: .version)
        try c.encode(consecutiveFailures, forKey: .consecutiveFailures)
        try c.encode(createdAt.description, forKey: .createdAt)
    }
}

/// What one entry of a source's history records: a run's outcome, or a reset (`DELETE`) of the source.
public enum HistoryStatus: String, Sendable, Codable, CaseIterable {
    case success
    case failed
    case reset

    public init(_ status: RunStatus) {
        switch status {
        case .success: self = .success
        case .failed: self = .failed
        }
    }
}

/// One accepted change of a source, as kept in its history (newest first when listed): an update, or a reset.
public struct WatermarkRun: Sendable, Equatable, Codable {
    public var version: Int64
    /// The server's clock when the change was accepted.
    public var recordedAt: Timestamp
    public var status: HistoryStatus
    /// The timestamp the update carried (optional for failed runs).
    public var timestamp: Timestamp?
    /// The watermark after this update.
    public var lastSuccessfulTimestamp: Timestamp?
    public var recordsCollected: Int64
    public var errorMessage: String?
    /// Who made the change: the lease owner when the write carried a lease's token, else the name of the API
    /// token used (never the token itself); `nil` when the service runs without tokens and no lease was used.
    public var actor: String?
    /// Why, as the caller said in `X-Reason`.
    public var reason: String?

    public init(
        version: Int64, recordedAt: Timestamp, status: HistoryStatus, timestamp: Timestamp?,
        lastSuccessfulTimestamp: Timestamp?, recordsCollected: Int64, errorMessage: String?, actor: String? = nil,
        reason: String? = nil
    ) {
        self.version = version
        self.recordedAt = recordedAt
        self.status = status
        self.timestamp = timestamp
        self.lastSuccessfulTimestamp = lastSuccessfulTimestamp
        self.recordsCollected = recordsCollected
        self.errorMessage = errorMessage
        self.actor = actor
        self.reason = reason
    }

    enum CodingKeys: String, CodingKey {
        case version
        case recordedAt = "recorded_at"
        case status, timestamp
        case lastSuccessfulTimestamp = "last_successful_timestamp"
        case recordsCollected = "records_collected"
        case errorMessage = "error_message"
        case actor, reason
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(version, forKey: .version)
        try c.encode(recordedAt.description, forKey: .recordedAt)
        try c.encode(status.rawValue, forKey: .status)
        try c.encodeText(timestamp?.description, forKey: .timestamp)
        try c.encodeText(lastSuccessfulTimestamp?.description, forKey: .lastSuccessfulTimestamp)
        try c.encode(recordsCollected, forKey: .recordsCollected)
        try c.encodeText(errorMessage, forKey: .errorMessage)
        try c.encodeText(actor, forKey: .actor)
        try c.encodeText(reason, forKey: .reason)
    }
}

/// The right of one owner to write one source until `expiresAt`.
///
/// `fencingToken` grows with every new grant and is kept by renewals; writes carry it as `Lease-Token`
/// so a collector that lost its lease (paused, partitioned) cannot overwrite its successor's work.
public struct Lease: Sendable, Equatable, Codable {
    public var sourceID: SourceID
    public var owner: String
    public var fencingToken: Int64
    public var expiresAt: Timestamp

    public init(sourceID: SourceID, owner: String, fencingToken: Int64, expiresAt: Timestamp) {
        self.sourceID = sourceID
        self.owner = owner
        self.fencingToken = fencingToken
        self.expiresAt = expiresAt
    }

    public func isLive(at now: Timestamp) -> Bool { now < expiresAt }

    enum CodingKeys: String, CodingKey {
        case sourceID = "source_id"
        case owner
        case fencingToken = "fencing_token"
        case expiresAt = "expires_at"
    }
}

extension KeyedEncodingContainer {
    /// Writes `text`, or null, through the container's own String and nil entry points. The JSON is the same as
    /// that of encoding the value itself (a `Timestamp`, an enum, an optional), but Foundation's JSONEncoder
    /// builds a nested encoder for every value that is not one of its primitives: that was most of the time of
    /// encoding a watermark, the largest single cost of answering a PUT.
    mutating func encodeText(_ text: String?, forKey key: Key) throws {
        if let text { try encode(text, forKey: key) } else { try encodeNil(forKey: key) }
    }
}
