import GRDB
import TestSupport
import Testing
import WatermarkCore

@testable import StorageService

/// The read cache holds at most `READ_CACHE_ENTRIES` watermarks, so the memory of the service does not grow
/// with the number of sources, and every read past it still answers what the database holds.
@Suite("Read cache bound")
struct ReadCacheTests {
    let clock = ManualClock(.at("2026-01-01T00:00:00Z"))

    private func store(entries: Int) throws -> SQLiteWatermarkStore {
        try SQLiteWatermarkStore(
            writer: try DatabaseQueue(), policy: WatermarkPolicy(), logger: .quiet, clock: { clock.now() },
            cacheCapacity: entries)
    }

    @Test("reads of more sources than the bound keep the cache at the bound and answer each source's own mark")
    func bounded() async throws {
        let store = try store(entries: 8)
        for index in 0..<40 {
            _ = try await store.write(
                WatermarkWrite(sourceID: sid("s\(index)"), update: .success(.at("2025-12-31T00:00:00Z"), records: 1)))
        }
        for _ in 0..<2 {
            for index in 0..<40 {
                let watermark = try await store.watermark(for: sid("s\(index)"))
                #expect(watermark?.sourceID == sid("s\(index)") && watermark?.version == 1)
                #expect(store.cache.count <= 8)
            }
        }
        #expect(store.cache.count == 8)
    }

    @Test("READ_CACHE_ENTRIES=0 keeps nothing in memory and reads still answer, also after a write")
    func off() async throws {
        let store = try store(entries: 0)
        _ = try await store.write(
            WatermarkWrite(sourceID: sid("a"), update: .success(.at("2025-12-31T00:00:00Z"), records: 1)))
        #expect(try await store.watermark(for: sid("a"))?.version == 1)
        _ = try await store.write(
            WatermarkWrite(sourceID: sid("a"), update: .success(.at("2025-12-31T01:00:00Z"), records: 2)))
        #expect(try await store.watermark(for: sid("a"))?.version == 2)
        #expect(store.cache.count == 0)
    }

    @Test("READ_CACHE_ENTRIES is read, defaults to 5000, and a value out of range is refused by name")
    func configuration() throws {
        #expect(try StorageConfiguration([:]).readCacheEntries == 5000)
        #expect(try StorageConfiguration(["READ_CACHE_ENTRIES": "0"]).readCacheEntries == 0)
        #expect(try StorageConfiguration(["READ_CACHE_ENTRIES": " 250000 "]).readCacheEntries == 250_000)
        for bad in ["-1", "lots", "10000001", "1e4"] {
            #expect {
                _ = try StorageConfiguration(["READ_CACHE_ENTRIES": bad])
            } throws: { error in
                "\(error)" == "READ_CACHE_ENTRIES '\(bad)' is invalid: expected a whole number from 0 to 10000000"
            }
        }
    }
}

/// The cache's own rules: first in, first out when full, a write's `forget` wins over a read from before it.
@Suite("Read cache eviction")
struct ReadCacheEvictionTests {
    @Test("when full, the key stored longest ago makes room; the last `capacity` keys stay, whatever the turnover")
    func firstInFirstOut() {
        let cache = ReadCache<Int, String>(capacity: 3)
        for key in 0..<3 { cache.store("v\(key)", for: key, ifGeneration: 0) }
        cache.store("v3", for: 3, ifGeneration: 0)
        #expect(cache.lookup(0).value == nil)
        #expect([1, 2, 3].map { cache.lookup($0).value } == ["v1", "v2", "v3"])
        // Storing a key that is there replaces its value and evicts nothing.
        cache.store("new", for: 2, ifGeneration: 0)
        #expect([1, 2, 3].map { cache.lookup($0).value } == ["v1", "new", "v3"])
        var generator = SeededRandom(seed: 20_261_205)
        var stored: [Int] = [1, 2, 3]
        for _ in 0..<10_000 {
            let key = Int(generator.next() % 50)
            if !stored.suffix(3).contains(key) { stored.append(key) }
            cache.store("v\(key)", for: key, ifGeneration: 0)
            #expect(cache.count <= 3)
        }
        for key in Set(stored.suffix(3)) { #expect(cache.lookup(key).value == "v\(key)") }
        #expect(cache.count == 3)
    }

    @Test("a forgotten key reads as missing, moves the generation on, and its slot serves again")
    func forgetAndReuse() {
        let cache = ReadCache<String, Int>(capacity: 2)
        cache.store(1, for: "a", ifGeneration: 0)
        cache.store(2, for: "b", ifGeneration: 0)
        let (_, before) = cache.lookup("a")
        cache.forget("a")
        #expect(cache.lookup("a").value == nil)
        // A read that began before the write's forget cannot put its value back.
        cache.store(1, for: "a", ifGeneration: before)
        #expect(cache.lookup("a").value == nil)
        let (_, now) = cache.lookup("a")
        cache.store(3, for: "a", ifGeneration: now)
        cache.store(4, for: "c", ifGeneration: now)
        #expect(cache.count <= 2)
        #expect(cache.lookup("c").value == 4)
    }
}
