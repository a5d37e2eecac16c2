/// Where watermarks live. The storage service talks to this protocol only, so a backend (SQLite today,
/// PostgreSQL next) can be swapped without touching the HTTP layer; every implementation runs the same
/// `WatermarkRules` inside one transaction per call.
public protocol WatermarkStore: Sendable {
    func watermark(for sourceID: SourceID) async throws -> Watermark?
    /// Applies one update atomically: all of the rules hold, or nothing changes.
    func write(_ write: WatermarkWrite) async throws -> WriteOutcome
    func delete(_ sourceID: SourceID, precondition: WritePrecondition?, leaseToken: Int64?) async throws
    func list(_ query: WatermarkQuery) async throws -> WatermarkPage
    /// Accepted updates, newest first; `watermark_not_found` when the source has none.
    func history(for sourceID: SourceID, limit: Int) async throws -> [WatermarkRun]
    func acquireLease(for sourceID: SourceID, owner: String, ttl: Duration) async throws -> Lease
    func releaseLease(for sourceID: SourceID, token: Int64?) async throws
    func summary() async throws -> WatermarkSummary
    /// Throws when the backend cannot serve reads and writes right now.
    func checkHealth() async throws
    /// Where and how the data is kept, for `/status`.
    func info() async throws -> StoreInfo
}

/// The `database` part of `/status`.
public struct StoreInfo: Sendable, Equatable, Codable {
    public var path: String
    public var sizeBytes: Int64
    public var journalMode: String

    public init(path: String, sizeBytes: Int64, journalMode: String) {
        self.path = path
        self.sizeBytes = sizeBytes
        self.journalMode = journalMode
    }

    enum CodingKeys: String, CodingKey {
        case path
        case sizeBytes = "size_bytes"
        case journalMode = "journal_mode"
    }
}

/// A conditional write: `If-Match: "<version>"`, `If-Match: *` or `If-None-Match: *`.
public enum WritePrecondition: Sendable, Equatable {
    case version(Int64)
    case exists
    case absent
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

    public init(
        sourceID: SourceID, update: WatermarkUpdate, force: Bool = false, precondition: WritePrecondition? = nil,
        leaseToken: Int64? = nil, idempotencyKey: String? = nil
    ) {
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

/// Counts for `/status` and `/metrics`.
public struct WatermarkSummary: Sendable, Equatable, Codable {
    public var total: Int
    public var failed: Int
    /// Sources whose last success is older than the policy's stale threshold, or that never succeeded.
    public var stale: Int

    public init(total: Int, failed: Int, stale: Int) {
        self.total = total
        self.failed = failed
        self.stale = stale
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
