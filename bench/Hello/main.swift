import Foundation
import Hummingbird

/// `bench-hello`: the smallest Hummingbird 2 service, the ceiling `make bench` measures the storage service
/// against in the same run. `GET /` answers `Hello`; `PORT` (default 8080) and `HOST` (127.0.0.1) as the
/// services read them.
@main
struct BenchHello {
    static func main() async throws {
        let environment = ProcessInfo.processInfo.environment
        let port = environment["PORT"].flatMap(Int.init) ?? 8080
        let host = environment["HOST"] ?? "127.0.0.1"
        let router = Router()
        router.get("/") { _, _ in "Hello" }
        let app = Application(
            router: router, configuration: .init(address: .hostname(host, port: port), serverName: "bench-hello"))
        try await app.runService()
    }
}
