import CLI
import Conversion
import Foundation

/// `dsconvert shard` / `dsconvert-shard`: per-device expert checkpoints for expert parallelism.
public enum ShardCommand: Command {
    public static let spec = CommandSpec(
        name: "shard",
        abstract: "Repack routed experts into per-device checkpoints for N-device expert placement.",
        discussion: """
        Device d holds experts [d·E/N, (d+1)·E/N) of every MoE layer: with n_group == N each routing group
        sits on one device and DeepSeek-V2's bound of M = topk_group devices per token holds. Other N must
        keep groups whole (N divides n_group, or n_group divides N) or are refused; E must divide by N.
        Output: device-0/ … device-{N-1}/, each a loadable checkpoint (config.json records its rank and
        expert range under "dsconvert_placement") holding its experts under their global names and the
        non-expert weights (--dense replicate, default) or, with --dense once, only device-0 holds them
        (the other ranks' records point there); plus placement.json (Schemas/placement.schema.json).
        Works on any earlier stage's output; FP8 scales travel with their weights.
        """,
        options: [
            OptionSpec("devices", value: "N", help: "Devices (default 8)."),
            OptionSpec("input", path: "DIR", help: "Input checkpoint."),
            CheckpointOutputOptions.output,
            OptionSpec("dense", value: "replicate|once", help: "Non-expert weights on every device (default) or on device-0 only."),
            CheckpointOutputOptions.maxShardSize,
            CheckpointOutputOptions.force,
            CheckpointOutputOptions.resume,
        ]
    )

    public static func run(_ arguments: ParsedArguments, terminal: Terminal) throws -> Int32 {
        let devices = try arguments.integer("devices", default: 8, in: 1...4096)
        let dense = try arguments.choice("dense", default: DenseWeights.replicate)
        let manifest = try ShardStage.run(input: URL(fileURLWithPath: try arguments.required("input")),
                                          output: URL(fileURLWithPath: try arguments.required("output")),
                                          devices: devices, denseOnce: dense == .once, force: arguments.flag("force"),
                                          shardSize: try ConversionOutputSize.parse(arguments), resume: arguments.flag("resume")) { terminal.progress($0) }
        terminal.endProgress()
        let p = manifest.placement
        terminal.out("\(try arguments.required("output")): \(p.experts) experts over \(p.devices) devices, \(p.expertsPerDevice) per device; device bound M = \(p.deviceBoundM); non-expert weights \(manifest.dense)")
        for d in manifest.devices {
            // Interpolated, not String(format:): "%d" reads 32 bits, and a V3 device's expert bytes pass 2^31.
            let experts = p.range(device: d.device)
            terminal.out("  \(d.directory)  experts [\(experts.lowerBound), \(experts.upperBound))  expert bytes \(d.expertBytes)  dense bytes \(d.denseBytes)")
        }
        terminal.out(String(format: "  expert bytes spread across devices: %.4f%%", manifest.expertBytesSpread * 100))
        return ExitCode.success
    }
}

/// `--dense`: where a sharded output keeps the non-expert weights.
enum DenseWeights: String, CaseIterable {
    /// On every device, so each device directory loads alone.
    case replicate
    /// On device-0 only; the other ranks' placement records point there.
    case once
}
