import Foundation
import SafeTensors

/// `reshard`: a checkpoint's tensors, byte for byte, in shards of another size.
public enum ReshardStage {
    public struct Summary: Sendable {
        public let tensors: Int
        public let files: Int
    }

    /// Copies every tensor of `input` into `output` laid out by `shardSize`. Each output shard is
    /// written front to back (hashed as it is written, no read-back) and shards are interleaved so
    /// their hashes run side by side, as every other stage writes.
    public static func run(input: URL, output: URL, shardSize: ShardSize, force: Bool, resume: Bool,
                           progress: ((String) -> Void)? = nil) throws -> Summary {
        let checkpoint = try Checkpoint(directory: input)
        let planned = checkpoint.tensors.map { PlannedTensor(name: $0.name, dtype: $0.dtype, shape: $0.shape) }
        let maxShardSize = shardSize.resolve(input: input, tensors: planned)
        let layout = CheckpointLayout(tensors: planned, maxShardSize: maxShardSize)
        let out = try ConversionOutput(input: input, output: output, force: force, layout: layout,
                                       stage: .init(stage: .reshard, options: ["max_shard_size": String(maxShardSize)], input: input.path),
                                       resume: resume)
        let order = WriteSchedule.interleaved(layout.shards.map(\.tensors)) { $0.byteCount }
        for (i, info) in order.enumerated() where !out.writer.isWritten(info.name) {
            try out.writer.write(info.name, view: try checkpoint.view(info.name))
            checkpoint.release(info.name)
            if i % 64 == 0 || i == order.count - 1 { progress?("reshard: \(i + 1)/\(order.count) tensors") }
        }
        try out.copySideFiles()
        try out.commit()
        return Summary(tensors: order.count, files: layout.shards.count)
    }
}
