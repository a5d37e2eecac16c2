import PostgresSupport
import Testing
import WatermarkCore

@testable import StorageService

@Suite("DATABASE_URL")
struct PostgresURLTests {
    @Test("postgres:// and postgresql:// with user, password, host, port, database and sslmode")
    func parses() throws {
        let url = try PostgresURL("postgresql://wm:p%40ss%2Fw0rd@db.internal:6432/watermarks?sslmode=require")
        #expect(url.user == "wm" && url.password == "p@ss/w0rd" && url.host == "db.internal")
        #expect(url.port == 6432 && url.database == "watermarks" && url.sslMode == .require)
        let plain = try PostgresURL("postgres://wm@localhost/w")
        #expect(plain.port == 5432 && plain.password == nil && plain.sslMode == .prefer)
        for mode in PostgresURL.SSLMode.allCases {
            #expect(try PostgresURL("postgres://u:p@h/d?sslmode=\(mode.rawValue)").sslMode == mode)
        }
    }

    @Test(
        "a URL that cannot work is refused naming DATABASE_URL, and never repeats the password",
        arguments: [
            "mysql://u:hunter2@h/d", "postgres://u:hunter2@/d", "postgres://:hunter2@h/d", "postgres://u:hunter2@h",
            "postgres://u:hunter2@h/", "postgres://u:hunter2@h/d/e", "postgres://u:hunter2@h:70000/d",
            "postgres://u:hunter2@h/d?sslmode=sometimes", "postgres://u:hunter2@h/d?connect_timeout=3", "not a url",
        ])
    func refuses(text: String) {
        #expect {
            _ = try PostgresURL(text)
        } throws: { error in
            guard let error = error as? ConfigurationKeyError else { return false }
            return error.key == "DATABASE_URL" && !error.description.contains("hunter2")
        }
    }

    @Test("the redacted form names the server without the password; the configuration reads it")
    func redacted() throws {
        let url = try PostgresURL("postgres://wm:hunter2@db:5433/prod")
        #expect(url.redacted == "postgres://wm@db:5433/prod")
        var configuration = try StorageConfiguration(["DATABASE_URL": "postgres://wm:hunter2@db:5433/prod"])
        #expect(configuration.databaseURL == url)
        configuration = try StorageConfiguration([:])
        #expect(configuration.databaseURL == nil)
        #expect(throws: ConfigurationKeyError.self) { try StorageConfiguration(["DATABASE_URL": "sqlite://x"]) }
    }
}
