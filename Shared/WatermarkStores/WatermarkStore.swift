import WatermarkCore

/// Where watermarks live: the server side. The storage service talks to this protocol only, so a backend (SQLite
/// today, PostgreSQL next) can be swapped without touching the HTTP layer; every implementation loads a
/// `WatermarkSnapshot` inside one transaction per call, applies the pure `WatermarkRules` to it and persists
/// their plan.
public protocol WatermarkStore: Sendable {
    func watermark(for sourceID: SourceID) async throws -> Watermark?
    /// Applies one update atomically: all of the rules hold, or nothing changes.
    func write(_ write: WatermarkWrite) async throws -> WriteOutcome
    /// Resets a source, leaving a `reset` run in its history attributed as `attribution` says.
    func delete(
        _ sourceID: SourceID, precondition: WritePrecondition?, leaseToken: Int64?, attribution: Attribution
    ) async throws
    func list(_ query: WatermarkQuery) async throws -> WatermarkPage
    /// Accepted changes (updates and resets), newest first; `watermark_not_found` when the source has none. A reset
    /// source still answers its runs: the history is the audit trail and outlives the watermark.
    func history(for sourceID: SourceID, limit: Int) async throws -> [WatermarkRun]
    /// The live lease on the source, `nil` when none is (never granted, expired or released).
    func lease(for sourceID: SourceID) async throws -> Lease?
    func acquireLease(for sourceID: SourceID, owner: String, ttl: Duration) async throws -> Lease
    func releaseLease(for sourceID: SourceID, token: Int64?) async throws
    func summary() async throws -> WatermarkSummary
    /// Throws when the backend cannot serve reads and writes right now.
    func checkHealth() async throws
    /// Where and how the data is kept, for `/status`.
    func info() async throws -> StoreInfo
}

extension WatermarkStore {
    /// A reset by an unnamed caller, with no reason given.
    public func delete(_ sourceID: SourceID, precondition: WritePrecondition?, leaseToken: Int64?) async throws {
        try await delete(sourceID, precondition: precondition, leaseToken: leaseToken, attribution: Attribution())
    }
}

/// The `database` part of `/status`, the same shape for every backend: which one (`sqlite`, `memory`, later
/// `postgres`), where the data is (a file, or a server named without credentials), its size, and what only that
/// backend has (`details`, flattened into the object: SQLite's `journal_mode`, for instance).
public struct StoreInfo: Sendable, Equatable, Codable {
    public var backend: String
    public var path: String
    public var sizeBytes: Int64
    public var details: [String: String]

    public init(backend: String, path: String, sizeBytes: Int64, details: [String: String] = [:]) {
        self.backend = backend
        self.path = path
        self.sizeBytes = sizeBytes
        self.details = details
    }

    private struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ string: String) { stringValue = string }
        init?(stringValue: String) { self.init(stringValue) }
        init?(intValue: Int) { nil }
    }

    private static let fixed: Set<String> = ["backend", "path", "size_bytes"]

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: Key.self)
        backend = try container.decode(String.self, forKey: Key("backend"))
        path = try container.decode(String.self, forKey: Key("path"))
        sizeBytes = try container.decode(Int64.self, forKey: Key("size_bytes"))
        var details: [String: String] = [:]
        for key in container.allKeys where !Self.fixed.contains(key.stringValue) {
            details[key.stringValue] = try container.decode(String.self, forKey: key)
        }
        self.details = details
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Key.self)
        try container.encode(backend, forKey: Key("backend"))
        try container.encode(path, forKey: Key("path"))
        try container.encode(sizeBytes, forKey: Key("size_bytes"))
        for (key, value) in details.sorted(by: { $0.key < $1.key }) where !Self.fixed.contains(key) {
            try container.encode(value, forKey: Key(key))
        }
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
