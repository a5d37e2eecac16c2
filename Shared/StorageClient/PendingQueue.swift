import Foundation
import WatermarkCore

/// What `WatermarkManager.updateWatermark` did with an update.
public enum WatermarkUpdateResult: Sendable, Equatable {
    /// The storage accepted it; this is its answer.
    case applied(Watermark)
    /// The storage was unreachable: the update is queued on disk and will be replayed. The watermark is the
    /// local projection (its `version` is an estimate); `pending` counts this source's queued updates.
    case queued(Watermark, pending: Int)

    /// The watermark after the update: the storage's, or the local projection when queued.
    public var watermark: Watermark {
        switch self {
        case .applied(let watermark), .queued(let watermark, _): watermark
        }
    }

    public var isQueued: Bool {
        if case .queued = self { return true }
        return false
    }
}

/// What one `replayPending()` did.
public struct ReplaySummary: Sendable, Equatable {
    /// Queued updates the storage accepted.
    public var applied = 0
    /// Queued updates the storage refused for good, moved to the dead-letter file.
    public var dropped = 0
    /// Updates still queued (the storage failed again).
    public var remaining = 0

    public init(applied: Int = 0, dropped: Int = 0, remaining: Int = 0) {
        self.applied = applied
        self.dropped = dropped
        self.remaining = remaining
    }
}

/// A queued update the storage refused for good, kept in `dead-letter.json` for an operator to look at.
public struct DeadLetter: Sendable, Equatable, Codable {
    public let update: PendingUpdate
    /// The storage's error code (e.g. `watermark_regression`).
    public let code: String?
    public let reason: String
    public let refusedAt: Timestamp

    enum CodingKeys: String, CodingKey {
        case update
        case code
        case reason
        case refusedAt = "refused_at"
    }
}

/// One update waiting in `pending.json` for the storage to come back.
public struct PendingUpdate: Sendable, Equatable, Codable {
    /// Position in the queue; grows by one per queued update and never repeats within a state directory.
    public let sequence: Int64
    public let sourceID: SourceID
    public let update: WatermarkUpdate
    /// Everything else the update said: its idempotency key (always set), lease token, force, precondition, and
    /// the reason the history records (`X-Reason`).
    public let options: UpdateOptions
    public let queuedAt: Timestamp

    enum CodingKeys: String, CodingKey {
        case sequence
        case sourceID = "source_id"
        case update
        case idempotencyKey = "idempotency_key"
        case leaseToken = "lease_token"
        case force
        case precondition
        case reason
        case queuedAt = "queued_at"
    }

    init(sequence: Int64, sourceID: SourceID, update: WatermarkUpdate, options: UpdateOptions, queuedAt: Timestamp) {
        self.sequence = sequence
        self.sourceID = sourceID
        self.update = update
        self.options = options
        self.queuedAt = queuedAt
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        sequence = try c.decode(Int64.self, forKey: .sequence)
        sourceID = try c.decode(SourceID.self, forKey: .sourceID)
        update = try c.decode(WatermarkUpdate.self, forKey: .update)
        queuedAt = try c.decode(Timestamp.self, forKey: .queuedAt)
        let precondition: WritePrecondition?
        switch try c.decodeIfPresent(String.self, forKey: .precondition) {
        case nil: precondition = nil
        case "*": precondition = .exists
        case "absent": precondition = .absent
        case let text?:
            guard let version = Int64(text) else {
                throw DecodingError.dataCorruptedError(
                    forKey: .precondition, in: c, debugDescription: "not a version, '*' or 'absent'"
                )
            }
            precondition = .version(version)
        }
        options = UpdateOptions(
            precondition: precondition, idempotencyKey: try c.decode(String.self, forKey: .idempotencyKey),
            leaseToken: try c.decodeIfPresent(Int64.self, forKey: .leaseToken),
            force: try c.decode(Bool.self, forKey: .force),
            reason: try c.decodeIfPresent(String.self, forKey: .reason)
        )
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(sequence, forKey: .sequence)
        try c.encode(sourceID, forKey: .sourceID)
        try c.encode(update, forKey: .update)
        try c.encode(options.idempotencyKey, forKey: .idempotencyKey)
        try c.encode(options.leaseToken, forKey: .leaseToken)
        try c.encode(options.force, forKey: .force)
        let precondition: String? =
            switch options.precondition {
            case nil: nil
            case .exists: "*"
            case .absent: "absent"
            case .version(let version): String(version)
            }
        try c.encode(precondition, forKey: .precondition)
        try c.encodeIfPresent(options.reason, forKey: .reason)
        try c.encode(queuedAt, forKey: .queuedAt)
    }
}

/// The content of `pending.json`.
struct PendingQueue: Codable {
    var nextSequence: Int64 = 1
    var updates: [PendingUpdate] = []

    enum CodingKeys: String, CodingKey {
        case nextSequence = "next_sequence"
        case updates
    }

    mutating func append(sourceID: SourceID, update: WatermarkUpdate, options: UpdateOptions, queuedAt: Timestamp) {
        updates.append(
            PendingUpdate(
                sequence: nextSequence, sourceID: sourceID, update: update, options: options, queuedAt: queuedAt)
        )
        nextSequence += 1
    }
}
