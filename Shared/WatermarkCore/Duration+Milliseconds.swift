extension Duration {
    /// Whole milliseconds, for `duration_ms` log metadata.
    public var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
