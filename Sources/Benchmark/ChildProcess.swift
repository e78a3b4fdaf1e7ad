import Foundation
import SafeTensors
#if canImport(Glibc)
import Glibc
#endif

/// How one timed child process ended, decoded from its wait status.
///
/// A wait status holds either an exit code (bits 8-15, low 7 bits zero) or the number of the signal
/// that killed the child (low 7 bits; bit 7 flags a core dump). Reading bits 8-15 alone, as the bench
/// once did, gives 0 for a signalled child: an OOM-killed or crashed run then counted as a success.
public enum JobOutcome: Equatable, Sendable {
    /// The child exited with this code (0 is the only success).
    case exited(Int32)
    /// The child was killed by this signal (9 for SIGKILL, the OOM killer's).
    case signalled(Int32)
    /// The child never ran: posix_spawn failed with this error number.
    case spawnFailed(Int32)
    /// The child exited 0, but its output is not what the job must produce.
    case badOutput(String)

    /// Decodes a status from wait4 (which, without WUNTRACED, reports only terminated children).
    public init(waitStatus status: Int32) {
        let signal = status & 0x7F
        self = signal == 0 ? .exited((status >> 8) & 0xFF) : .signalled(signal)
    }

    /// Exit code 0 (and, once checked, the expected output): the only outcome that enters the figures.
    public var succeeded: Bool { self == .exited(0) }

    /// "ok", or "failed (signal 9)", "failed (exit 3)", "failed (spawn: …)", "failed (output: …)".
    public var label: String {
        switch self {
        case .exited(0): return "ok"
        case let .exited(code): return "failed (exit \(code))"
        case let .signalled(signal): return "failed (signal \(signal))"
        case let .spawnFailed(code): return "failed (spawn: \(SystemCallError.reason(of: code)))"
        case let .badOutput(reason): return "failed (output: \(reason))"
        }
    }
}

/// One timed run of a job.
public struct JobRun: Sendable {
    /// Seconds from spawn to reaping (0 when the spawn failed).
    public var wall: Double
    /// Peak resident set of the child, from the kernel's rusage.
    public var peakRSSKiB: Int
    public var outcome: JobOutcome
    /// CPU seconds of the child's every thread, user and system.
    public var cpuSeconds: Double
    /// Page faults that waited for the disk (a mapped page not in the page cache).
    public var majorFaults: Int

    public init(wall: Double, peakRSSKiB: Int, outcome: JobOutcome, cpuSeconds: Double = 0, majorFaults: Int = 0) {
        self.wall = wall
        self.peakRSSKiB = peakRSSKiB
        self.outcome = outcome
        self.cpuSeconds = cpuSeconds
        self.majorFaults = majorFaults
    }
}

/// A cold run was asked for and the page cache could not be dropped: the machine's permissions, not
/// the command line, are at fault, so it is a failure (exit 1), not a usage error.
public struct PageCacheNotDropped: LocalizedError, Sendable {
    public var errorDescription: String? { "--cold could not drop the page cache (writing /proc/sys/vm/drop_caches needs root)" }
}

/// Runs programs as child processes, timed, with their stdout and stderr sent to /dev/null.
public enum ChildProcess {
    /// Writes dirty pages back and drops the page cache (root only), so the next job reads from
    /// disk as a checkpoint larger than RAM is read. Throws `PageCacheNotDropped` when `control`
    /// cannot be written (not root; tests name a file that cannot be).
    public static func dropPageCache(control: String = "/proc/sys/vm/drop_caches") throws {
        guard run("/bin/sh", ["-c", "sync; echo 3 > \"$0\"", control]).outcome.succeeded else { throw PageCacheNotDropped() }
    }

    /// Spawns `path` with `arguments`, waits for it, and reports wall time, peak RSS and how it ended.
    public static func run(_ path: String, _ arguments: [String]) -> JobRun {
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        var pid: pid_t = 0
        let start = DispatchTime.now().uptimeNanoseconds
        let spawned = posix_spawn(&pid, path, &actions, nil, argv, environ)
        guard spawned == 0 else { return JobRun(wall: 0, peakRSSKiB: 0, outcome: .spawnFailed(spawned)) }
        var status: Int32 = 0
        var usage = rusage()
        var waited: Int32
        repeat { waited = wait4(pid, &status, 0, &usage) } while waited == -1 && errno == EINTR
        let wall = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        // No status to decode (ECHILD when SIGCHLD is ignored): a failed run, never a zero status.
        guard waited == pid else { return JobRun(wall: wall, peakRSSKiB: 0, outcome: .spawnFailed(errno)) }
        func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
        return JobRun(wall: wall, peakRSSKiB: Int(usage.ru_maxrss), outcome: JobOutcome(waitStatus: status),
                      cpuSeconds: seconds(usage.ru_utime) + seconds(usage.ru_stime), majorFaults: Int(usage.ru_majflt))
    }
}
