import Foundation
import WatermarkCore

/// The API tokens of `STORAGE_API_TOKEN`, each with a name for the audit trail.
///
/// The value is one token (named `api`), or a comma-separated list of `name:token` pairs
/// (`ci:3f9a...,ops:77c1...`): a change made with a token is recorded under its name, never the token. A name is 1
/// to 64 of `A-Z a-z 0-9 . _ @ -`. Each pair is also accepted whole, so that a value of one pair is the contract's
/// bearer token (`ops:77c1` lets in both `ops:77c1` and `77c1`, named `ops`), and a value without a comma that is
/// not a pair is one token named `api` (`a/b:c`). The clients read the same variable and send the token of a single
/// pair (what services before the whole value was let in accept too, so clients and services may be upgraded in
/// any order).
public struct APITokens: Sendable, Equatable {
    public struct Named: Sendable, Equatable {
        public var name: String
        public var token: String

        public init(name: String, token: String) {
            self.name = name
            self.token = token
        }
    }

    /// The name of a token given alone.
    public static let defaultName = "api"

    public var tokens: [Named]

    public init(_ tokens: [Named]) { self.tokens = tokens }

    /// Reads the variable's value; the error names the item at fault by position, never by its token.
    public init(parsing text: String, key: String = "STORAGE_API_TOKEN") throws(ConfigurationKeyError) {
        let items = text.split(separator: ",", omittingEmptySubsequences: false).map {
            $0.trimmingCharacters(in: .whitespaces)
        }
        func pair(_ item: String) -> Named? {
            let parts = item.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, Self.isName(parts[0]), !parts[1].isEmpty else { return nil }
            return Named(name: String(parts[0]), token: String(parts[1]))
        }
        if items.count == 1, pair(items[0]) == nil {
            guard !items[0].isEmpty else { throw ConfigurationKeyError(key: key, message: "is empty") }
            self.init([Named(name: Self.defaultName, token: items[0])])
            return
        }
        var tokens: [Named] = []
        for (index, item) in items.enumerated() {
            guard let named = pair(item) else {
                throw ConfigurationKeyError(
                    key: key,
                    message: """
                        item \(index + 1) is not name:token (a name of 1 to 64 letters, digits, '.', '_', '@' or '-', \
                        then a non-empty token)
                        """)
            }
            tokens.append(named)
        }
        guard Set(tokens.map(\.name)).count == tokens.count else {
            throw ConfigurationKeyError(key: key, message: "names a token twice: each name must be unique")
        }
        // Each pair is also let in whole: the contract's bearer when the value is that one pair, and what a client
        // (curl, another implementation) sends when given the pair as its token.
        tokens += zip(tokens, items).map { Named(name: $0.name, token: $1) }
        guard Set(tokens.map(\.token)).count == tokens.count else {
            throw ConfigurationKeyError(key: key, message: "holds the same token twice under two names")
        }
        self.init(tokens)
    }

    /// The one token a client sends, from the same variable: a token alone, or the token of a single `name:token`
    /// pair.
    public static func clientToken(_ text: String, key: String = "STORAGE_API_TOKEN") throws(ConfigurationKeyError)
        -> String
    {
        let parsed = try APITokens(parsing: text, key: key)
        guard parsed.names.count == 1 else {
            throw ConfigurationKeyError(key: key, message: "lists \(parsed.names.count) tokens: a client sends one")
        }
        return parsed.tokens[0].token
    }

    /// The tokens' names, each once, in the order given.
    public var names: [String] {
        var seen = Set<String>()
        return tokens.map(\.name).filter { seen.insert($0).inserted }
    }

    /// The token of an `Authorization: Bearer <token>` header (the scheme in any case), or nil.
    public static func bearer(_ header: String?) -> String? {
        guard let header else { return nil }
        let parts = header.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        return String(parts[1]).trimmingWhitespace()
    }

    /// The name of `presented`, compared with every token in constant time (the time says nothing about which
    /// token, or where it differs).
    public func name(of presented: String) -> String? {
        var found: String?
        for named in tokens where Self.constantTimeEquals(presented, named.token) {
            found = named.name
        }
        return found
    }

    public func contains(_ token: String) -> Bool { tokens.contains { $0.token == token } }

    /// Compares every byte of the longer input, so the time taken says nothing about where they differ.
    public static func constantTimeEquals(_ lhs: String, _ rhs: String) -> Bool {
        let a = Array(lhs.utf8)
        let b = Array(rhs.utf8)
        var difference: UInt8 = a.count == b.count ? 0 : 1
        for index in 0..<max(a.count, b.count) {
            difference |= (index < a.count ? a[index] : 0) ^ (index < b.count ? b[index] : 0)
        }
        return difference == 0
    }

    private static func isName(_ name: Substring) -> Bool {
        (1...64).contains(name.utf8.count)
            && name.utf8.allSatisfy { byte in
                switch byte {
                case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                    UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "@"),
                    UInt8(ascii: "-"):
                    true
                default: false
                }
            }
    }
}
