import Foundation
import GRDB
import Logging
import TestSupport
import Testing
import WatermarkCore
import WatermarkStores

@testable import StorageService

/// `storage-service seed`: the rows the scale benchmark runs on, readable by the store as its own.
@Suite("Seeding a database")
struct SeederTests {
    @Test("a seeded database is the store's own: watermarks, history, counts; a database with watermarks is refused")
    func seedsANewDatabaseOnly() async throws {
        try await withTemporaryDirectory { folder in
            let path = folder + "/w.db"
            let now = Timestamp.at("2026-12-01T12:00:00Z")
            var reports: [String] = []
            try WatermarkSeeder(sources: 250, history: 1_010, batchSize: 100, now: now).seed(path: path) {
                reports.append($0)
            }
            #expect(reports.last == "250 of 250 sources")
            let store = try SQLiteWatermarkStore(
                path: path, policy: WatermarkPolicy(), logger: Logger(label: "test"), clock: { now })
            // 1,010 runs over 250 sources: four each, the first ten five; one in a hundred failed.
            #expect(try await store.watermark(for: SourceID("seed-0"))?.version == 5)
            #expect(try await store.watermark(for: SourceID("seed-10"))?.version == 4)
            #expect(try await store.history(for: SourceID("seed-0"), limit: 10).count == 5)
            #expect(try await store.watermark(for: SourceID("seed-1"))?.status == .failed)
            let summary = try await store.summary()
            #expect(summary.total == 250 && summary.failed == 3)
            try store.close()

            #expect(throws: WatermarkSeeder.NotEmpty.self) {
                try WatermarkSeeder(sources: 10, history: 10, prefix: "other-", now: now).seed(path: path) { _ in }
            }
            let again = try SQLiteWatermarkStore(
                path: path, policy: WatermarkPolicy(), logger: Logger(label: "test"), clock: { now })
            defer { try? again.close() }
            #expect(try await again.summary().total == 250)
            #expect(try await again.watermark(for: SourceID("other-0")) == nil)
        }
    }
}
