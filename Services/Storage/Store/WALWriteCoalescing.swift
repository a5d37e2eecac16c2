import GRDB
import GRDBSQLite

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A VFS over SQLite's default one that hands each commit's WAL frames to the file in one write.
///
/// SQLite appends a frame to the WAL in two writes, its 24-byte header then the page, so a group commit of some 25
/// pages made 50 `pwrite` calls, each taking the file's lock and walking the page cache for a part of a page: 13 % of
/// the writer thread's CPU under `PUT`s at 64 connections (`perf`). Gathered: `PUT` at 64 connections 19.6k against
/// 18.5k req/s, at one connection p50 391-415 against 439-445 us (three alternating rounds). Here writes that
/// continue one another are gathered in memory and reach the file as one write when SQLite syncs the WAL, which it does
/// at every commit (`synchronous = FULL`) before it publishes the new frames in the shared index: no other connection
/// or process can look for a frame that is not in the file yet, and a commit whose gathered write fails (a full disk)
/// fails like one whose own write failed. Anything else done to the WAL (a read, a write elsewhere, truncating, its
/// size, a file control, closing it) first writes what was gathered, so the file always reads as SQLite wrote it. A
/// connection that commits without a sync (`synchronous` below FULL) is covered too: the frame that ends a transaction
/// (its header carries the database's size) is written out with its page at once.
///
/// Only WAL files get this: every other file is the default VFS's own, opened in place.
enum WALWriteCoalescing {
    static let name = "watermark-wal-coalescing"

    /// Largest write gathered, and handed to the default VFS at once: a transaction larger than this reaches the file
    /// in steps of it. The unix VFS keeps only the low 17 bits of a write's size (`seekAndWriteFd`: `nBuf &= 0x1ffff`),
    /// so a write of 128 KiB would write nothing and fail as a full disk; a larger buffer would only cost memory (a
    /// first trial gathered up to 1 MiB: the writer of a million-source database peaked at 64.6 MiB against 62.9).
    static let maxWrite = 0x1ffff

    /// Registers the VFS as the process's default, once; false if SQLite has no default VFS to wrap.
    static let installed: Bool = install()

    /// Bytes before the default VFS's file object in ours: `sqlite3_file` (its methods), then the gathering state.
    private static let headerSize = 2 * MemoryLayout<UnsafeRawPointer>.stride

    private static func install() -> Bool {
        guard let base = sqlite3_vfs_find(nil) else { return false }
        if let current = base.pointee.zName, String(cString: current) == name { return true }
        let vfs = UnsafeMutablePointer<sqlite3_vfs>.allocate(capacity: 1)
        vfs.initialize(to: base.pointee)
        vfs.pointee.pNext = nil
        vfs.pointee.zName = UnsafePointer(strdup(name))
        vfs.pointee.pAppData = UnsafeMutableRawPointer(base)
        vfs.pointee.szOsFile = Int32(headerSize) + base.pointee.szOsFile
        vfs.pointee.xOpen = { vfs, path, file, flags, outFlags in
            guard let vfs, let file else { return SQLITE_MISUSE }
            let base = vfs.pointee.pAppData!.assumingMemoryBound(to: sqlite3_vfs.self)
            // Any file but a WAL: the default VFS's file object in place of ours (it is large enough).
            guard flags & SQLITE_OPEN_WAL != 0 else { return base.pointee.xOpen!(base, path, file, flags, outFlags) }
            let inner = (UnsafeMutableRawPointer(file) + WALWriteCoalescing.headerSize).assumingMemoryBound(
                to: sqlite3_file.self)
            inner.pointee.pMethods = nil
            let code = base.pointee.xOpen!(base, path, inner, flags, outFlags)
            guard code == SQLITE_OK else {
                if let methods = inner.pointee.pMethods { _ = methods.pointee.xClose!(inner) }
                file.pointee.pMethods = nil
                return code
            }
            let state = Unmanaged.passRetained(GatheredWrites(inner: inner, methods: inner.pointee.pMethods!.pointee))
                .toOpaque()
            WALWriteCoalescing.stateSlot(file).storeBytes(of: state, as: UnsafeMutableRawPointer.self)
            file.pointee.pMethods = UnsafePointer(WALWriteCoalescing.walMethods)
            return SQLITE_OK
        }
        // The calls that take a path go to the default VFS with its own object, as `xOpen` does. The others (randomness,
        // sleep, time, dynamic loading, system calls) are the default VFS's functions, copied above: they get this
        // object, a copy of the default one but for its name, file size, `pAppData` and these calls, and the unix VFS's
        // versions do not read it.
        vfs.pointee.xDelete = { vfs, path, syncDirectory in
            let base = vfs!.pointee.pAppData!.assumingMemoryBound(to: sqlite3_vfs.self)
            return base.pointee.xDelete!(base, path, syncDirectory)
        }
        vfs.pointee.xAccess = { vfs, path, flags, result in
            let base = vfs!.pointee.pAppData!.assumingMemoryBound(to: sqlite3_vfs.self)
            return base.pointee.xAccess!(base, path, flags, result)
        }
        vfs.pointee.xFullPathname = { vfs, path, size, out in
            let base = vfs!.pointee.pAppData!.assumingMemoryBound(to: sqlite3_vfs.self)
            return base.pointee.xFullPathname!(base, path, size, out)
        }
        return sqlite3_vfs_register(vfs, 1) == SQLITE_OK
    }

    /// The WAL's methods: each writes what was gathered first, except a write that continues it.
    ///
    /// `nonisolated(unsafe)`: a pointer to a table filled once, here, before any file can use it (SQLite reads it only
    /// through files opened after `install()`, which this initializer precedes), and never written again.
    nonisolated(unsafe) private static let walMethods: UnsafeMutablePointer<sqlite3_io_methods> = {
        let methods = UnsafeMutablePointer<sqlite3_io_methods>.allocate(capacity: 1)
        methods.initialize(to: sqlite3_io_methods())
        methods.pointee.iVersion = 1
        methods.pointee.xClose = { file in
            let state = Unmanaged<GatheredWrites>.fromOpaque(WALWriteCoalescing.stateAddress(file!)).takeRetainedValue()
            let written = state.flush()
            let closed = state.methods.xClose!(state.inner)
            return written == SQLITE_OK ? closed : written
        }
        methods.pointee.xRead = { file, data, amount, offset in
            WALWriteCoalescing.afterFlush(file) { $0.methods.xRead!($0.inner, data, amount, offset) }
        }
        methods.pointee.xWrite = { file, data, amount, offset in
            WALWriteCoalescing.gathered(file).write(data!, count: Int(amount), at: offset)
        }
        methods.pointee.xTruncate = { file, size in
            WALWriteCoalescing.afterFlush(file) { $0.methods.xTruncate!($0.inner, size) }
        }
        methods.pointee.xSync = { file, flags in
            WALWriteCoalescing.afterFlush(file) { $0.methods.xSync!($0.inner, flags) }
        }
        methods.pointee.xFileSize = { file, size in
            WALWriteCoalescing.afterFlush(file) { $0.methods.xFileSize!($0.inner, size) }
        }
        methods.pointee.xLock = { file, level in
            let state = WALWriteCoalescing.gathered(file)
            return state.methods.xLock!(state.inner, level)
        }
        methods.pointee.xUnlock = { file, level in
            let state = WALWriteCoalescing.gathered(file)
            return state.methods.xUnlock!(state.inner, level)
        }
        methods.pointee.xCheckReservedLock = { file, result in
            let state = WALWriteCoalescing.gathered(file)
            return state.methods.xCheckReservedLock!(state.inner, result)
        }
        methods.pointee.xFileControl = { file, operation, argument in
            WALWriteCoalescing.afterFlush(file) { $0.methods.xFileControl!($0.inner, operation, argument) }
        }
        methods.pointee.xSectorSize = { file in
            let state = WALWriteCoalescing.gathered(file)
            return state.methods.xSectorSize!(state.inner)
        }
        methods.pointee.xDeviceCharacteristics = { file in
            let state = WALWriteCoalescing.gathered(file)
            return state.methods.xDeviceCharacteristics!(state.inner)
        }
        return methods
    }()

    /// The writes of the WAL of `db`'s main database so far: SQLite's, and those that reached the file (nil when the WAL
    /// is not open or not this VFS's).
    static func writes(of db: Database) -> (sqlite: Int, file: Int)? {
        var file: UnsafeMutablePointer<sqlite3_file>?
        guard sqlite3_file_control(db.sqliteConnection, "main", SQLITE_FCNTL_JOURNAL_POINTER, &file) == SQLITE_OK,
            let file, file.pointee.pMethods == UnsafePointer(walMethods)
        else { return nil }
        let state = gathered(file)
        return (state.sqliteWrites, state.fileWrites)
    }

    /// `call` with the file's gathering state once what it gathered is written out (its error otherwise).
    private static func afterFlush(
        _ file: UnsafeMutablePointer<sqlite3_file>?, _ call: (GatheredWrites) -> Int32
    ) -> Int32 {
        let state = gathered(file)
        let code = state.flush()
        return code == SQLITE_OK ? call(state) : code
    }

    /// Where `xOpen` stores the file's `GatheredWrites`, retained: right after its methods.
    private static func stateSlot(_ file: UnsafeMutablePointer<sqlite3_file>) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(file) + MemoryLayout<UnsafeRawPointer>.stride
    }

    private static func stateAddress(_ file: UnsafeMutablePointer<sqlite3_file>) -> UnsafeMutableRawPointer {
        stateSlot(file).load(as: UnsafeMutableRawPointer.self)
    }

    private static func gathered(_ file: UnsafeMutablePointer<sqlite3_file>?) -> GatheredWrites {
        Unmanaged<GatheredWrites>.fromOpaque(stateAddress(file!)).takeUnretainedValue()
    }

    /// One WAL file's writes not yet handed to it. SQLite uses a file object from one connection at a time.
    private final class GatheredWrites {
        let inner: UnsafeMutablePointer<sqlite3_file>
        /// The default VFS's methods for `inner`.
        let methods: sqlite3_io_methods
        /// `maxWrite` bytes, allocated at the first write (a reader's WAL never has one).
        private var bytes: UnsafeMutableRawPointer?
        private var count = 0
        private var offset: Int64 = 0
        private var pieces = 0
        /// Writes handed to the file, and the writes of SQLite they carried.
        private(set) var fileWrites = 0
        private(set) var sqliteWrites = 0
        /// The last write was the header of a frame that ends a transaction: its page is written out with it.
        private var endsTransaction = false

        init(inner: UnsafeMutablePointer<sqlite3_file>, methods: sqlite3_io_methods) {
            self.inner = inner
            self.methods = methods
        }

        deinit { free(bytes) }

        func write(_ data: UnsafeRawPointer, count amount: Int, at position: Int64) -> Int32 {
            if count > 0, position != offset + Int64(count) || count + amount > maxWrite {
                let code = flush()
                guard code == SQLITE_OK else { return code }
            }
            guard amount <= maxWrite else {
                fileWrites += 1
                sqliteWrites += 1
                return methods.xWrite!(inner, data, Int32(amount), position)
            }
            if count == 0 { offset = position }
            if bytes == nil {
                guard let allocated = malloc(maxWrite) else { return SQLITE_NOMEM }
                bytes = allocated
            }
            (bytes! + count).copyMemory(from: data, byteCount: amount)
            count += amount
            pieces += 1
            if endsTransaction {
                endsTransaction = false
                return flush()
            }
            // A frame header (24 bytes) whose second word, the database's size in pages, is set ends a transaction.
            endsTransaction = amount == 24 && (4..<8).contains { data.load(fromByteOffset: $0, as: UInt8.self) != 0 }
            return SQLITE_OK
        }

        /// Hands what was gathered to the file in one write.
        func flush() -> Int32 {
            guard count > 0 else { return SQLITE_OK }
            defer {
                count = 0
                pieces = 0
            }
            sqliteWrites += pieces
            fileWrites += 1
            return methods.xWrite!(inner, bytes, Int32(count), offset)
        }
    }
}
