import NIOCore
import Testing
import WatermarkCore
import WatermarkStores

@testable import StorageService

@Suite("Per-source metrics")
struct MetricsTests {
    /// Two scrapes right after start: the second arrives while the first still loads the sources. It loads them
    /// itself rather than answer without the series (it got an empty text, as if no source existed).
    @Test func aScrapeDuringTheFirstLoadStillGetsThePerSourceSeries() async throws {
        let metrics = StorageMetrics()
        let mark = try Timestamp(rfc3339: "2026-12-01T00:00:00Z")
        let watermark = Watermark(
            sourceID: try SourceID("feed-a"), lastSuccessfulTimestamp: mark, lastRunTimestamp: mark, status: .success,
            recordsCollected: 1, errorMessage: nil, version: 1, consecutiveFailures: 0, createdAt: mark)
        let (started, startedSignal) = AsyncStream<Void>.makeStream()
        let (release, releaseSignal) = AsyncStream<Void>.makeStream()
        try await withThrowingTaskGroup(of: String.self) { group in
            group.addTask {
                let text = await metrics.renderSources {
                    startedSignal.yield()
                    for await _ in release { break }
                    return [watermark]
                }
                return String(buffer: text)
            }
            for await _ in started { break }
            let second = String(buffer: await metrics.renderSources { [watermark] })
            releaseSignal.finish()
            #expect(second.contains(#"storage_watermark_timestamp_seconds{source_id="feed-a"}"#), "\(second)")
            let first = try await group.next() ?? ""
            #expect(first.contains(#"storage_watermark_timestamp_seconds{source_id="feed-a"}"#), "\(first)")
        }
    }

    /// The watermark counts are left out of a scrape whose store could not read them: the last counts read were
    /// kept, and shown as current for as long as the database was down. They come back with the database.
    @Test func countsTheStoreCouldNotReadAreLeftOut() {
        let metrics = StorageMetrics()
        let read = metrics.render(summary: WatermarkSummary(total: 7, failed: 2, stale: 1))
        #expect(read.contains(#"storage_watermarks{state="total"} 7"#) && read.contains(#"state="stale"} 1"#))
        let failed = metrics.render(summary: nil)
        #expect(!failed.contains("storage_watermarks{"), "\(failed)")
        let again = metrics.render(summary: WatermarkSummary(total: 8, failed: 0, stale: 0))
        #expect(again.contains(#"storage_watermarks{state="total"} 8"#), "\(again)")
    }

    /// A store that fails is asked at most once a second, however many scrapes arrive (each scrape asked it
    /// while no rendering existed yet).
    @Test func aFailingStoreIsAskedOnceASecondNotByEveryScrape() async {
        let metrics = StorageMetrics()
        let loads = LoadCounter()
        let started = ContinuousClock.now
        for _ in 0..<100 {
            let text = await metrics.renderSources {
                await loads.add()
                return nil
            }
            #expect(text.readableBytes == 0)
        }
        let seconds = Int((ContinuousClock.now - started).components.seconds)
        let count = await loads.count
        #expect(count <= 2 + seconds, "\(count) loads in \(seconds) s")
    }
}

private actor LoadCounter {
    var count = 0
    func add() { count += 1 }
}
