import Foundation

/// A throw-away certificate authority and the server certificates it signed, written into `directory` by
/// `scripts/make-dev-certs.sh` (the script users run for a try-out): for tests of HTTPS. The certificates are
/// for `localhost` and `127.0.0.1`.
package struct TestCertificates: Sendable {
    /// The CA's certificate (PEM): what a client trusts, as `STORAGE_CA_PATH`.
    package let caPath: String
    /// The storage server's certificate (PEM), as `TLS_CERT_PATH`.
    package let certificatePath: String
    /// The storage server's private key (PEM), as `TLS_KEY_PATH`.
    package let privateKeyPath: String
    /// The collection service's private key: it does not match `certificatePath`.
    package let otherKeyPath: String

    package init(in directory: URL) throws {
        let path = { (name: String) in directory.appendingPathComponent(name).path }
        caPath = path("ca.pem")
        certificatePath = path("storage.pem")
        privateKeyPath = path("storage.key")
        otherKeyPath = path("collection.key")
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts/make-dev-certs.sh")
        let (status, text) = try runToEnd(
            ["/bin/bash", script.path, directory.path],
            environment: ProcessInfo.processInfo.environment.merging(["DAYS": "2"]) { $1 })
        guard status == 0 else {
            throw CertificateError(description: "scripts/make-dev-certs.sh failed: \(text)")
        }
    }

    package struct CertificateError: Error, CustomStringConvertible {
        package let description: String
    }
}
