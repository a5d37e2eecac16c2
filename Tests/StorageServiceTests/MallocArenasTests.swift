import Testing

@testable import StorageService

/// The storage process limits glibc's malloc arenas at its start (`MallocArenas`); the call is looked up at run time.
@Suite("Malloc arenas")
struct MallocArenasTests {
    @Test("glibc's mallopt is found and accepts an arena limit")
    func limitAccepted() {
        // A limit above glibc's default for this machine (eight per core): the test process keeps its arenas.
        #expect(MallocArenas.limit(to: 8 * 64))
    }
}
