/// A conditional write: `If-Match: "<version>"`, `If-Match: *` or `If-None-Match: *`.
public enum WritePrecondition: Sendable, Equatable {
    case version(Int64)
    case exists
    case absent
}

/// Who asks for a change and why, for the history's audit trail: the name of the API token the request used
/// (never the token) and the `X-Reason` it gave. The rules prefer the lease owner as the actor when the write
/// carries its lease's token.
public struct Attribution: Sendable, Equatable {
    /// The longest `X-Reason` accepted, in characters as sent (percent-encoded).
    public static let maxReasonLength = 500

    public var caller: String?
    public var reason: String?

    public init(caller: String? = nil, reason: String? = nil) {
        self.caller = caller
        self.reason = reason
    }

    /// The actor of a change: the owner of the lease whose token the write carried, else the caller.
    func actor(leaseToken: Int64?, lease: Lease?) -> String? {
        if let leaseToken, let lease, lease.fencingToken == leaseToken { return lease.owner }
        return caller
    }
}

/// A `PUT` with everything the request said besides the body.
public struct WatermarkWrite: Sendable, Equatable {
    public var sourceID: SourceID
    public var update: WatermarkUpdate
    /// Allows a success timestamp older than the stored one (deliberate backfill).
    public var force: Bool
    public var precondition: WritePrecondition?
    public var leaseToken: Int64?
    public var idempotencyKey: String?
    public var attribution: Attribution

    public init(
        sourceID: SourceID, update: WatermarkUpdate, force: Bool = false, precondition: WritePrecondition? = nil,
        leaseToken: Int64? = nil, idempotencyKey: String? = nil, attribution: Attribution = Attribution()
    ) {
        self.attribution = attribution
        self.sourceID = sourceID
        self.update = update
        self.force = force
        self.precondition = precondition
        self.leaseToken = leaseToken
        self.idempotencyKey = idempotencyKey
    }

    /// What identifies "the same request" for an idempotency key: the body and the force flag.
    var fingerprint: String {
        let message = update.errorMessage.map { "\($0.utf8.count):\($0)" } ?? "-"
        return [
            update.status.rawValue, update.timestamp?.sortableString ?? "-",
            update.recordsCollected.map(String.init) ?? "-", force ? "force" : "-", message,
        ].joined(separator: "|")
    }
}

/// The answer to a write: the watermark after it, and whether it created the source or replayed an
/// earlier answer for the same idempotency key.
public struct WriteOutcome: Sendable, Equatable {
    public var watermark: Watermark
    public var created: Bool
    public var replayed: Bool

    public init(watermark: Watermark, created: Bool, replayed: Bool = false) {
        self.watermark = watermark
        self.created = created
        self.replayed = replayed
    }
}

/// Filters and paging of `GET /api/v1/watermarks`.
public struct WatermarkQuery: Sendable, Equatable {
    public static let defaultLimit = 100
    public static let maxLimit = 1000

    public var limit: Int
    /// Only sources after this one (the previous page's `next_cursor`).
    public var after: SourceID?
    public var status: RunStatus?
    /// Only sources whose last success is older than this, or that never succeeded.
    public var staleAfter: Duration?

    public init(
        limit: Int = defaultLimit, after: SourceID? = nil, status: RunStatus? = nil, staleAfter: Duration? = nil
    ) {
        self.limit = limit
        self.after = after
        self.status = status
        self.staleAfter = staleAfter
    }
}

/// One page of watermarks, sorted by source id.
public struct WatermarkPage: Sendable, Equatable, Codable {
    public var watermarks: [Watermark]
    /// Pass as `cursor` for the next page; `nil` on the last page.
    public var nextCursor: String?

    public init(watermarks: [Watermark], nextCursor: String?) {
        self.watermarks = watermarks
        self.nextCursor = nextCursor
    }

    /// Builds a page from up to `limit + 1` rows: the extra row only tells that there is more.
    public init(rows: [Watermark], limit: Int) {
        let page = Array(rows.prefix(limit))
        self.init(watermarks: page, nextCursor: rows.count > limit ? page.last?.sourceID.rawValue : nil)
    }

    enum CodingKeys: String, CodingKey {
        case watermarks
        case nextCursor = "next_cursor"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(watermarks, forKey: .watermarks)
        try c.encode(nextCursor, forKey: .nextCursor)
    }
}

/// The tunable parts of the rules, the same for every store.
public struct WatermarkPolicy: Sendable, Equatable {
    /// How far ahead of the server's clock a success timestamp may be.
    public var futureTolerance: Duration
    /// Runs kept per source in the history; older ones are dropped.
    public var historyRetention: Int
    /// How long an idempotency key's first answer is kept for replays.
    public var idempotencyRetention: Duration
    /// Age of the last success after which a source counts as stale in summaries.
    public var staleAfter: Duration
    /// Longest lease a collector may ask for.
    public var maxLeaseTTL: Duration

    public init(
        futureTolerance: Duration = .seconds(300), historyRetention: Int = 1000,
        idempotencyRetention: Duration = .seconds(86_400), staleAfter: Duration = .seconds(7200),
        maxLeaseTTL: Duration = .seconds(86_400)
    ) {
        self.futureTolerance = futureTolerance
        self.historyRetention = historyRetention
        self.idempotencyRetention = idempotencyRetention
        self.staleAfter = staleAfter
        self.maxLeaseTTL = maxLeaseTTL
    }
}
