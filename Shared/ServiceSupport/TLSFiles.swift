import Foundation
import NIOSSL
import WatermarkCore

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

    /// The files named in `values`, `nil` when neither key is set; one without the other is an error.
    public static func from(_ values: [String: String]) throws(ConfigurationKeyError) -> TLSFiles? {
        func value(_ key: String) -> String? {
            guard let text = values[key]?.trimmingCharacters(in: .whitespacesAndNewlines), !text.isEmpty else {
                return nil
            }
            return text
        }
        switch (value(certificateKey), value(privateKeyKey)) {
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
        let keyBytes = try TLSFiles.read(key: Self.privateKeyKey, path: privateKeyPath)
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
        let bytes = try read(key: key, path: path)
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
    static func read(key: String, path: String) throws(ConfigurationKeyError) -> [UInt8] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ConfigurationKeyError(key: key, message: "'\(path)' does not exist")
        }
        guard !isDirectory.boolValue else {
            throw ConfigurationKeyError(key: key, message: "'\(path)' is a folder, not a file")
        }
        do {
            return Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            throw ConfigurationKeyError(key: key, message: "'\(path)' cannot be read (\(error.localizedDescription))")
        }
    }
}
