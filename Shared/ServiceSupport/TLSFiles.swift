import Foundation
import NIOSSL
import WatermarkCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The certificate and private key a service serves HTTPS with: `TLS_CERT_PATH` (PEM, the server certificate
/// first, then any intermediates) and `TLS_KEY_PATH` (PEM, unencrypted). Set both, or neither for plain HTTP.
public struct TLSFiles: Sendable, Equatable {
    public static let certificateKey = "TLS_CERT_PATH"
    public static let privateKeyKey = "TLS_KEY_PATH"

    public let certificatePath: String
    public let privateKeyPath: String

    public init(certificatePath: String, privateKeyPath: String) {
        self.certificatePath = certificatePath
        self.privateKeyPath = privateKeyPath
    }

    /// The files named in `settings`, `nil` when neither key is set; one without the other is an error.
    public static func from(_ settings: Settings) throws(ConfigurationKeyError) -> TLSFiles? {
        switch (settings.text(certificateKey), settings.text(privateKeyKey)) {
        case (nil, nil):
            return nil
        case (let certificate?, let key?):
            return TLSFiles(certificatePath: certificate, privateKeyPath: key)
        case (nil, _?):
            throw ConfigurationKeyError(
                key: certificateKey, message: "is not set but \(privateKeyKey) is: set both, or neither")
        case (_?, nil):
            throw ConfigurationKeyError(
                key: privateKeyKey, message: "is not set but \(certificateKey) is: set both, or neither")
        }
    }

    /// A server configuration from the files, checked as far as can be before the first connection: both files
    /// read, the certificate chain and the key parsed, and the key matched against the certificate (a TLS
    /// context is built from them).
    public func serverConfiguration() throws(ConfigurationKeyError) -> TLSConfiguration {
        let chain = try TLSFiles.certificates(key: Self.certificateKey, path: certificatePath)
        let keyBytes = try TLSFiles.contents(key: Self.privateKeyKey, path: privateKeyPath)
        let privateKey: NIOSSLPrivateKey
        do {
            privateKey = try NIOSSLPrivateKey(bytes: keyBytes, format: .pem)
        } catch {
            throw ConfigurationKeyError(
                key: Self.privateKeyKey,
                message: "'\(privateKeyPath)' holds no unencrypted PEM private key (\(error))"
            )
        }
        let configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(privateKey)
        )
        do {
            _ = try NIOSSLContext(configuration: configuration)
        } catch {
            throw ConfigurationKeyError(
                key: Self.privateKeyKey,
                message: "'\(privateKeyPath)' does not match the certificate in '\(certificatePath)' (\(error))"
            )
        }
        return configuration
    }

    /// The PEM certificates in the file at `path` (at least one), for a chain or for trust roots.
    public static func certificates(key: String, path: String) throws(ConfigurationKeyError) -> [NIOSSLCertificate] {
        let bytes = try contents(key: key, path: path)
        let certificates: [NIOSSLCertificate]
        do {
            certificates = try NIOSSLCertificate.fromPEMBytes(bytes)
        } catch {
            throw ConfigurationKeyError(
                key: key, message: "'\(path)' holds no PEM certificate that can be read (\(error))")
        }
        guard !certificates.isEmpty else {
            throw ConfigurationKeyError(
                key: key, message: "'\(path)' holds no PEM certificate (no BEGIN CERTIFICATE block)")
        }
        return certificates
    }

    /// The bytes of a file, or an error that says why it cannot be read.
    static func contents(key: String, path: String) throws(ConfigurationKeyError) -> [UInt8] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ConfigurationKeyError(key: key, message: "'\(path)' does not exist")
        }
        guard !isDirectory.boolValue else {
            throw ConfigurationKeyError(key: key, message: "'\(path)' is a folder, not a file")
        }
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw unreadable(key, path, errno) }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16_384)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count == 0 { return bytes }
            guard count > 0 else {
                if errno == EINTR { continue }
                throw unreadable(key, path, errno)
            }
            // A certificate or key is a few KiB; anything past 1 MiB is not one.
            guard bytes.count + count <= 1 << 20 else {
                throw ConfigurationKeyError(key: key, message: "'\(path)' is over 1 MiB: not a PEM certificate or key")
            }
            bytes += chunk[0..<count]
        }
    }

    private static func unreadable(_ key: String, _ path: String, _ code: Int32) -> ConfigurationKeyError {
        ConfigurationKeyError(key: key, message: "'\(path)' cannot be read (\(String(cString: strerror(code))))")
    }
}
