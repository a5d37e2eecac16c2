import WatermarkCore

/// Where watermarks live: the server side. The storage service talks to this protocol only, so a backend (SQLite
/// today, PostgreSQL next) can be swapped without touching the HTTP layer; every implementation loads a
/// `WatermarkSnapshot` inside one transaction per call, applies the pure `WatermarkRules` to it and persists
/// their plan.
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
