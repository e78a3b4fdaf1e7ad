import Foundation
import SafeTensors

/// How large an output's shards may be: the limit `--max-shard-size` gave, or (its default) the
/// input's own layout.
///
/// Laid out like the input because that is what a user expects (shards of the size they gave; an
/// output twice as large, as from `--dequantize`, has about twice the files) and because shards are
/// hashed side by side as they are written, so one large file would make its SHA-256 a serial
/// stream. The rule, for an output of T bytes from an input whose largest shard file is S bytes among
/// N files (for a dsconvert output, the S and N its manifest recorded from the original checkpoint):
/// - the limit is S;
/// - unless N > 1 and the whole output would fit one file above 1 GB (T ≤ S, T > 1 GB): then the
///   output keeps the input's file count, with a limit of ⌈T / N⌉;
/// - an input with no shard files (not possible for a valid checkpoint) gets Hugging Face's 5 GB.
public enum ShardSize: Equatable, Sendable {
    case limit(Int)
    case likeInput

    /// Above this a single output file is worth splitting to hash it in parallel (1 GB).
    public static let singleFileLimit = 1_000_000_000

    /// The layout an output is sized after: the original checkpoint's largest shard file and file
    /// count. A dsconvert output records the basis it was sized after in its manifest, so a chain of
    /// stages lays out its last output exactly as `convert` does in one pass from the original.
    public struct Basis: Codable, Equatable, Sendable {
        public var largestShardBytes: Int
        public var files: Int

        enum CodingKeys: String, CodingKey {
            case largestShardBytes = "largest_shard_bytes"
            case files
        }

        public init(largestShardBytes: Int, files: Int) {
            self.largestShardBytes = largestShardBytes
            self.files = files
        }

        /// True for numbers a real checkpoint can have (a manifest is input like any other file).
        var isPlausible: Bool { (1...(1 << 50)).contains(largestShardBytes) && (1...1_000_000).contains(files) }

        /// The basis of `input`: the one its manifest records (when plausible), else its own shard files.
        public static func of(_ input: URL) -> Basis? {
            if let recorded = (try? ConversionManifest.load(directory: input))??.layoutBasis, recorded.isPlausible { return recorded }
            let sizes = ShardSize.shardFileBytes(input)
            guard let largest = sizes.max() else { return nil }
            return Basis(largestShardBytes: largest, files: sizes.count)
        }
    }

    /// The byte limit for an output of `outputBytes` from an input with shard files of `inputShardBytes`.
    public func resolve(inputShardBytes: [Int], outputBytes: Int) -> Int {
        resolve(basis: inputShardBytes.max().map { Basis(largestShardBytes: $0, files: inputShardBytes.count) }, outputBytes: outputBytes)
    }

    /// The byte limit for an output of `outputBytes` sized after `basis`.
    public func resolve(basis: Basis?, outputBytes: Int) -> Int {
        switch self {
        case let .limit(bytes):
            return bytes
        case .likeInput:
            guard let basis, basis.isPlausible else { return CheckpointLayout.defaultMaxShardSize }
            let largest = basis.largestShardBytes, files = basis.files
            if files > 1, outputBytes <= largest, outputBytes > Self.singleFileLimit {
                return outputBytes / files + (outputBytes % files == 0 ? 0 : 1)
            }
            return largest
        }
    }

    /// The limit for `tensors` written from the checkpoint in `input`.
    public func resolve(input: URL, tensors: [PlannedTensor]) -> Int {
        resolve(basis: Basis.of(input), outputBytes: tensors.reduce(0) { $0 + $1.byteCount })
    }

    /// Sizes of the safetensors files of a checkpoint directory (the index's shards or
    /// model.safetensors; other `*.safetensors` beside them, such as goldens, are not counted).
    public static func shardFileBytes(_ directory: URL) -> [Int] {
        Checkpoint.shardFileNames(in: directory).compactMap { FileEntry.following(directory.appendingPathComponent($0).path)?.size }
    }

    /// What the manifest records for the option.
    public var optionValue: String {
        switch self {
        case let .limit(bytes): return String(bytes)
        case .likeInput: return "like-input"
        }
    }
}
