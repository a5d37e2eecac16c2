import Foundation
import Logging
import StorageClient
import Synchronization
import TestSupport
import Testing
import WatermarkCore

/// A fresh folder under the system's temporary directory, removed after `body` (also when it throws).
func withTemporaryDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
    let path = (NSTemporaryDirectory() as NSString).appendingPathComponent("storage-client-tests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(path)
}

/// The `StorageClientError` that `body` threw, or `nil` when it did not throw one.
func storageError(_ body: () async throws -> Void) async -> StorageClientError? {
    do {
        try await body()
        return nil
    } catch let error as StorageClientError {
        return error
    } catch {
        Issue.record("expected a StorageClientError, got \(error)")
        return nil
    }
}
