import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// How many malloc arenas the process may use.
///
/// glibc gives threads that meet on an arena's lock arenas of their own, up to eight per core, and memory freed in
/// one arena serves only that arena's threads; the service's threads (event loops, the concurrency pool, the writer,
/// the readers, the checkpointer) all allocate. At a million watermarks, three passes of the scale profile's loads
/// left the process at 61.5 and 61.6 MiB of peak RSS with the default and at 59.3 and 59.8 with two arenas on this
/// 2-core machine, where the scale benchmark had read 62.5 and 64.4 MiB against its aim of 64; throughput the same
/// (`PUT` at 64 connections 18.3k against 17.4k req/s, `GET` 44.7k against 42.7k, four alternating rounds). Set first
/// thing in `main`, the limit leaves the process with two arenas under load where it had ten (its heaps in
/// /proc/PID/maps), as `MALLOC_ARENA_MAX=2` does.
enum MallocArenas {
    /// glibc's `M_ARENA_MAX` (malloc.h, which Swift's Glibc module does not import).
    private static let arenaMaxParameter: Int32 = -8

    /// One arena per core (two at least), unless `MALLOC_ARENA_MAX` already set the number at the process's start.
    static func limitToCores() {
        guard ProcessInfo.processInfo.environment["MALLOC_ARENA_MAX"] == nil else { return }
        _ = limit(to: max(2, ProcessInfo.processInfo.activeProcessorCount))
    }

    /// Sets the limit with glibc's `mallopt`, looked up at run time (it is declared in malloc.h only); false where
    /// there is no such call (another C library) or it refused. Arenas already made stay.
    static func limit(to arenas: Int) -> Bool {
        #if canImport(Glibc)
            typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
            // A null handle is glibc's RTLD_DEFAULT: the symbol as the process's libraries define it.
            guard let symbol = dlsym(nil, "mallopt") else { return false }
            return unsafeBitCast(symbol, to: Mallopt.self)(arenaMaxParameter, Int32(clamping: arenas)) == 1
        #else
            return false
        #endif
    }
}
