import DeepSeekModel
import Foundation
import SafeTensors

/// `dsconvert convert`: absorb, quantize and shard chained in one streaming pass.
///
/// Each input tensor is read once and flows through the same steps the stages use, so the output is
/// byte-identical to running `absorb`, `quantize` and `shard` one after another (only the manifest's
/// record of each stage's input differs: there is no intermediate directory). With `--kv6 --calibration`
/// the calibration forward pass reads the weights once more before the conversion pass.
public enum ConvertPipeline {
    public struct Options: Sendable {
        public var absorb: AbsorbOptions?
        public var absorbDType: AbsorbedDType
        public var fp8: QuantizeStage.FP8Options?
        public var kv6: QuantizeStage.KV6Options?
        /// Devices to shard routed experts over; nil writes one checkpoint.
        public var devices: Int?
        public var denseOnce: Bool

        public init(absorb: AbsorbOptions? = nil, absorbDType: AbsorbedDType = .bf16, fp8: QuantizeStage.FP8Options? = nil,
                    kv6: QuantizeStage.KV6Options? = nil, devices: Int? = nil, denseOnce: Bool = false) {
            self.absorb = absorb
            self.absorbDType = absorbDType
            self.fp8 = fp8
            self.kv6 = kv6
            self.devices = devices
            self.denseOnce = denseOnce
        }
    }

    public struct Summary: Sendable {
        /// The stages this run applied, in order.
        public let stages: [ConversionManifest.StageName]
        public let files: Int
        public let bytesIn: Int
        public let bytesOut: Int
    }

    public static func run(input: URL, output: URL, options: Options, force: Bool, shardSize: ShardSize = .likeInput,
                           resume: Bool = false, progress: ((String) -> Void)? = nil) throws -> Summary {
        guard options.absorb != nil || options.fp8 != nil || options.kv6 != nil || options.devices != nil else {
            throw ConversionError.unsupportedInput(path: input.path, reason: "nothing to do: give --absorb, --fp8, --kv6 and/or --devices")
        }
        if options.devices != nil { try ShardStage.refuseShardedInput(input) }
        let checkpoint = try CheckpointSource(directory: input)
        var source: TensorSource = checkpoint
        if let absorb = options.absorb { source = try AbsorbStep(source: source, options: absorb, dtype: options.absorbDType) }
        if options.fp8 != nil || options.kv6 != nil { source = try QuantizeStep(source: source, fp8: options.fp8, kv6: options.kv6, progress: progress) }
        let bytesIn = checkpoint.checkpoint.totalTensorBytes
        if let devices = options.devices {
            let manifest = try ShardStage.write(source, to: output, inputStages: checkpoint.stages, devices: devices, denseOnce: options.denseOnce,
                                                force: force, shardSize: shardSize, resume: resume, progress: progress.map { p in { p("convert: " + $0) } })
            let names = source.newStages(after: checkpoint.stages).map(\.stage) + [.shard]
            return Summary(stages: names, files: manifest.files.count, bytesIn: bytesIn, bytesOut: manifest.devices.reduce(0) { $0 + $1.totalBytes })
        }
        let layout = try ConversionOutput.write(source, to: output, inputStages: checkpoint.stages, force: force, shardSize: shardSize,
                                                resume: resume, label: "convert", progress: progress)
        return Summary(stages: source.newStages(after: checkpoint.stages).map(\.stage), files: layout.shards.count,
                       bytesIn: bytesIn, bytesOut: layout.totalTensorBytes)
    }
}
