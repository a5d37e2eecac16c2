/// A start-up setting that cannot work: the key (an environment variable or a flag) and a message that says
/// what is wrong and how to fix it. TLS files and the storage client's settings both throw it.
public struct ConfigurationKeyError: Error, Sendable, Equatable, CustomStringConvertible {
    public let key: String
    public let message: String

    public init(key: String, message: String) {
        self.key = key
        self.message = message
    }

    public var description: String { "\(key) \(message)" }
}
