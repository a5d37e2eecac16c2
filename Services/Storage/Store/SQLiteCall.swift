import GRDB
import GRDBSQLite
import WatermarkCore

/// One run of a statement prepared by GRDB (`cachedStatement`), bound and stepped with SQLite's own calls: the
/// statements every write runs (the snapshot's reads, the watermark's row, the run appended to the history).
///
/// Through GRDB each of them built a `StatementArguments` array of database values and checked it against the
/// statement, and each read built a cursor and a `Row` before the record was made from it: the snapshot's two reads
/// and the writes were 7 % of the service's CPU under PUTs at 64 connections (`perf`), most of it that machinery, and
/// CPU is what bounds PUTs on two cores. Bound and read directly (with the JSON coders of a request made once), CPU
/// per PUT fell from 95 to 86 us and PUT at 64 connections rose from 15.5-15.9k to 16.9-17.4k req/s (alternating
/// runs). The statement is reset when the call ends, so a read never keeps its snapshot open.
///
/// What GRDB's `execute` does besides is not needed where this is used: no transaction observer watches these tables,
/// and an aborted transaction is still caught. A failed step throws the `DatabaseError` GRDB would have thrown, and the
/// statement that follows a write's in its transaction is GRDB's own (the savepoint's `RELEASE`, or `COMMIT`), which
/// throws when SQLite rolled the transaction back (`sqlite3_get_autocommit`).
struct SQLiteCall: ~Copyable {
    private let statement: Statement
    private let handle: OpaquePointer
    private let connection: OpaquePointer?

    init(_ db: Database, sql: String) throws {
        statement = try db.cachedStatement(sql: sql)
        handle = statement.sqliteStatement
        connection = db.sqliteConnection
        sqlite3_reset(handle)
    }

    deinit {
        sqlite3_reset(handle)
        sqlite3_clear_bindings(handle)
    }

    // MARK: Binding

    /// Binds `values` to the statement's parameters, in order from the first, each with GRDB's own binding of its
    /// type (`StatementBinding`: `sqlite3_bind_text` for a text, `sqlite3_bind_int64` for a number) but no array of
    /// database values.
    func bind<each Value: StatementBinding>(_ values: repeat each Value) throws {
        var index: Int32 = 0
        for value in repeat each values {
            index += 1
            try check(value.bind(to: handle, at: index))
        }
    }

    // MARK: Stepping

    /// Steps once: `true` with a row to read, `false` when the statement is done.
    func step() throws -> Bool {
        switch sqlite3_step(handle) {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        case let code: throw failure(code)
        }
    }

    /// Runs a statement that returns no row.
    func run() throws {
        guard try !step() else { throw failure(SQLITE_MISUSE, "the statement returned a row") }
    }

    // MARK: Reading the current row (columns count from 0)

    func text(_ column: Int32) -> String? {
        guard let bytes = sqlite3_column_text(handle, column) else { return nil }
        let count = Int(sqlite3_column_bytes(handle, column))
        return String(decoding: UnsafeBufferPointer(start: bytes, count: count), as: UTF8.self)
    }

    func int64(_ column: Int32) -> Int64? {
        sqlite3_column_type(handle, column) == SQLITE_NULL ? nil : sqlite3_column_int64(handle, column)
    }

    /// The value read from a NOT NULL column: the schema makes NULL impossible unless the file was damaged.
    func required<T>(_ value: T?, _ column: Int32) throws -> T {
        guard let value else { throw damaged(column, "is NULL") }
        return value
    }

    func timestamp(_ column: Int32) throws -> Timestamp? {
        guard let text = text(column) else { return nil }
        guard let timestamp = try? Timestamp(rfc3339: text) else { throw damaged(column, "is not a timestamp") }
        return timestamp
    }

    func value<T: RawRepresentable<String>>(_ column: Int32, as type: T.Type) throws -> T? {
        guard let text = text(column) else { return nil }
        guard let value = T(rawValue: text) else { throw damaged(column, "is not a known \(T.self)") }
        return value
    }

    // MARK: Errors

    private func check(_ code: Int32) throws {
        guard code == SQLITE_OK else { throw failure(code) }
    }

    private func failure(_ code: Int32, _ message: String? = nil) -> DatabaseError {
        DatabaseError(
            resultCode: ResultCode(rawValue: code),
            message: message ?? connection.map { String(cString: sqlite3_errmsg($0)) }, sql: statement.sql)
    }

    private func damaged(_ column: Int32, _ problem: String) -> DatabaseError {
        let name = sqlite3_column_name(handle, column).map { String(cString: $0) } ?? "\(column)"
        return failure(SQLITE_CORRUPT, "column \(name) \(problem)")
    }

}
