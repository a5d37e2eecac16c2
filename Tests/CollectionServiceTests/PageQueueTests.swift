import Testing
import WatermarkCore

@testable import CollectionService

@Suite("Page queue between fetching and writing", .timeLimit(.minutes(1)))
struct PageQueueTests {
    private func page(_ number: Int) -> CollectorPage { CollectorPage(records: [], next: "\(number)") }

    @Test func pagesComeOutInOrderInBatchesOfAtMostTheLimit() async throws {
        let queue = PageQueue(limit: 2)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for number in 1...7 { try await queue.put(page(number)) }
                queue.finish()
            }
            var taken: [String] = []
            while let batch = try await queue.takeAll() {
                #expect((1...2).contains(batch.count))
                taken += batch.compactMap(\.next)
            }
            #expect(taken == (1...7).map(String.init))
            try await group.waitForAll()
        }
    }

    /// A tick wakes the run waiting for a page with no page (so that it can renew its lease); pages put before a
    /// tick are taken with it, and the pages after it come as before.
    @Test func aTickWakesTheWaitingRunWithNoPage() async throws {
        let queue = PageQueue(limit: 2)
        async let woken = queue.takeAll()
        queue.tick()
        #expect(try await woken?.isEmpty == true)
        try await queue.put(page(1))
        queue.tick()
        #expect(try await queue.takeAll()?.compactMap(\.next) == ["1"])
        try await queue.put(page(2))
        queue.finish()
        #expect(try await queue.takeAll()?.compactMap(\.next) == ["2"])
        #expect(try await queue.takeAll() == nil)
    }

    @Test func aFailureComesAfterThePagesPutBeforeIt() async throws {
        struct Broken: Error {}
        let queue = PageQueue(limit: 2)
        try await queue.put(page(1))
        try await queue.put(page(2))
        queue.fail(Broken())
        queue.finish()  // the first end stays
        #expect(try await queue.takeAll()?.compactMap(\.next) == ["1", "2"])
        await #expect(throws: Broken.self) { _ = try await queue.takeAll() }
    }

    @Test func closingWakesAFetcherWaitingForRoomAndRefusesMore() async throws {
        let queue = PageQueue(limit: 1)
        try await queue.put(page(1))
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                do {
                    try await queue.put(page(2))  // no room until taken: waits until the close
                    return false
                } catch {
                    return error is CancellationError
                }
            }
            queue.close()
            #expect(await group.next() == true)
        }
        await #expect(throws: CancellationError.self) { try await queue.put(page(3)) }
    }

    @Test func aSourceThatCheckpointsEveryPageIsWrittenPageByPage() throws {
        var source = SourceConfiguration(id: try SourceID("s"), kind: .directory(DirectorySettings(path: "/tmp")))
        source.checkpointPages = 1
        #expect(CollectionRunner.pagesAhead(source) == 1)
        source.checkpointPages = 0
        #expect(CollectionRunner.pagesAhead(source) == 2)
        source.checkpointPages = 10
        #expect(CollectionRunner.pagesAhead(source) == 2)
    }
}
