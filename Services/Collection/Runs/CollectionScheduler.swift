import Logging
import ServiceLifecycle
import StorageClient
import WatermarkCore

/// Runs every source on its interval (plus jitter), at most `maxConcurrentRuns` at a time and never two runs
/// of one source at once; replays queued watermark updates in the background.
///
/// On graceful shutdown (SIGTERM) it stops starting runs; a running run stops at its next page boundary
/// without moving the watermark (what it wrote is dropped as duplicates next time), a replay of queued updates at
/// its next delivery, and `run()` returns once every run has ended.
struct CollectionScheduler: Service {
    struct Configuration: Sendable {
        var maxConcurrentRuns = 2
        /// Up to this fraction of the interval is added at random, so replicas and sources spread out.
        var jitterFraction = 0.1
        /// The longest the scheduler sleeps without a signal: due times are wall-clock instants, so a clock
        /// that jumps is noticed within this.
        var longestSleep: Duration = .seconds(30)
        /// How often staleness and the watermark gauges are refreshed between runs.
        var watchInterval: Duration = .seconds(1)
        /// How often queued updates are replayed and watermark ages refreshed.
        var maintenanceInterval: Duration = .seconds(30)

        init(maxConcurrentRuns: Int = 2, maintenanceInterval: Duration = .seconds(30)) {
            self.maxConcurrentRuns = maxConcurrentRuns
            self.maintenanceInterval = maintenanceInterval
        }
    }

    let engine: CollectionEngine
    let configuration: Configuration

    /// `delay` plus up to `jitterFraction` of it at random: replicas started together, or skipped together for a
    /// lease one of them holds, do not come back in lockstep.
    static func jittered(_ delay: Duration, fraction: Double, random: Double = .random(in: 0...1)) -> Duration {
        delay + .milliseconds(Int64(delay.secondsDouble * fraction * random * 1000))
    }

    func run() async throws {
        let board = engine.board
        let clock = engine.clock
        engine.logger.info(
            "scheduler started",
            metadata: [
                "sources": "\(board.order.count)", "max_concurrent_runs": "\(configuration.maxConcurrentRuns)",
            ]
        )
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                group.addTask {
                    // Maintenance (replays, staleness) every maintenanceInterval; the gauges every watchInterval.
                    var last: Timestamp?
                    while !Task.isCancelled, !board.isStopping() {
                        let now = clock()
                        if last.map({ now.duration(since: $0) >= configuration.maintenanceInterval }) ?? true {
                            last = now
                            await engine.maintain()  // refreshes staleness too
                        } else {
                            // Staleness and the watermark gauges, so /status and /metrics only read.
                            await engine.refreshWatching()
                        }
                        await board.stopped.wait(for: configuration.watchInterval)
                    }
                }
                while !Task.isCancelled, !board.isStopping() {
                    let slots = configuration.maxConcurrentRuns - (await board.runningCount)
                    let claimed = await board.claimDue(now: clock(), limit: slots)
                    for source in claimed {
                        group.addTask {
                            let report = await engine.execute(source)
                            let now = clock()
                            let next = now.adding(
                                Self.jittered(
                                    report.retryAfter ?? source.interval, fraction: configuration.jitterFraction))
                            await board.finish(report, nextRunAt: next)
                            await engine.refreshWatching()
                        }
                    }
                    // Sleep until the next due run, or until a trigger, a finished run or shutdown signals. With
                    // every slot taken only a finished run can start another: an overdue source's past due time
                    // would make this loop spin until then.
                    var sleep = configuration.longestSleep
                    if claimed.count < slots, let due = await board.nextDue() {
                        sleep = min(sleep, max(.zero, due.duration(since: clock())))
                    }
                    await board.wakeup.wait(for: sleep)
                }
            }
        } onGracefulShutdown: {
            board.stop()
            // A replay of a long outage's queue stops between two deliveries; the rest is replayed at the next start.
            engine.manager.stopReplaying()
        }
        engine.logger.info("scheduler stopped")
    }
}
