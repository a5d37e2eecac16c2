import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import NIOSSL

/// The `healthcheck` sub-command of both services: a container health check for images without curl.
public enum HealthProbe {
    /// Whether `url` answers 200 within `timeout`, with a line to print: the status, or why it failed.
    ///
    /// - Parameter caPath: a PEM file of the private CA to trust for an `https://` URL (as `STORAGE_CA_PATH`),
    ///   on top of the system's roots; `nil` trusts the system's roots only.
    public static func check(url: String, caPath: String?, timeout: Duration) async -> (healthy: Bool, line: String) {
        var configuration = HTTPClient.Configuration()
        if let caPath {
            do {
                var tls = TLSConfiguration.makeClientConfiguration()
                tls.additionalTrustRoots = [.certificates(try TLSFiles.certificates(key: "--ca-path", path: caPath))]
                configuration.tlsConfiguration = tls
            } catch {
                return (false, "\(url): \(error)")
            }
        }
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        let result: (Bool, String)
        do {
            let response = try await client.execute(HTTPClientRequest(url: url), timeout: .init(timeout))
            _ = try await response.body.collect(upTo: 64 * 1024)
            result = (response.status == .ok, "\(url): \(response.status.code)")
        } catch {
            result = (false, "\(url): \(error)")
        }
        try? await client.shutdown()
        return result
    }
}
