import Foundation

/// Everything that can be wrong with a safetensors file, a sharded checkpoint, or writing one.
///
/// Every message names the file and, where one is involved, the tensor, so that a failure
/// in a 55-shard checkpoint points at the byte range to look at.
public enum SafeTensorsError: LocalizedError, Equatable, Sendable {
    case cannotOpen(file: String, reason: String)
    case fileTooSmall(file: String, size: Int)
    case headerTooLarge(file: String, length: UInt64)
    case headerPastEndOfFile(file: String, length: UInt64, fileSize: Int)
    case headerNotUTF8(file: String)
    case headerDoesNotStartWithBrace(file: String)
    case invalidHeaderJSON(file: String, reason: String)
    case invalidTensorEntry(file: String, tensor: String, reason: String)
    case unknownDType(file: String, tensor: String, dtype: String)
    case shapeOverflow(file: String, tensor: String)
    case misalignedSubByteTensor(file: String, tensor: String)
    case byteSizeMismatch(file: String, tensor: String, expected: UInt64, actual: UInt64)
    case overlappingTensors(file: String, tensor: String, previous: String)
    case holeBeforeTensor(file: String, tensor: String, gapStart: UInt64, gapEnd: UInt64)
    case dataNotCoveringFile(file: String, tensorEnd: UInt64, dataSize: UInt64)
    case duplicateTensor(file: String, tensor: String)
    case noCheckpoint(directory: String)
    /// The root of a `shard` output (placement.json and device-N): a checkpoint per device, not one.
    case shardedOutput(directory: String)
    case invalidIndex(file: String, reason: String)
    case indexNamesMissingShard(file: String, shard: String, tensor: String)
    case shardLacksTensor(file: String, shard: String, tensor: String)
    case tensorNotInIndex(file: String, shard: String, tensor: String)
    case tensorInTwoShards(tensor: String, first: String, second: String)
    case tensorNotFound(tensor: String)
    case writeFailed(file: String, reason: String)
    case writePlanViolation(file: String, tensor: String, reason: String)
    case outputExists(path: String)
    case cannotCreateOutput(path: String, reason: String)
    case inputChanged(file: String, openedSize: Int, size: Int)

    public var errorDescription: String? {
        switch self {
        case let .cannotOpen(file, reason):
            return "\(file): cannot open: \(reason)"
        case let .fileTooSmall(file, size):
            return "\(file): truncated file: \(size) bytes is shorter than the 8-byte header length"
        case let .headerTooLarge(file, length):
            return "\(file): header length \(length) exceeds the 100000000-byte limit"
        case let .headerPastEndOfFile(file, length, fileSize):
            return "\(file): header length \(length) runs past the end of the \(fileSize)-byte file (truncated?)"
        case let .headerNotUTF8(file):
            return "\(file): header is not valid UTF-8"
        case let .headerDoesNotStartWithBrace(file):
            return "\(file): header does not start with '{'"
        case let .invalidHeaderJSON(file, reason):
            return "\(file): header is not valid JSON: \(reason)"
        case let .invalidTensorEntry(file, tensor, reason):
            return "\(file): tensor '\(tensor)': \(reason)"
        case let .unknownDType(file, tensor, dtype):
            return "\(file): tensor '\(tensor)': unknown dtype '\(dtype)'"
        case let .shapeOverflow(file, tensor):
            return "\(file): tensor '\(tensor)': shape product overflows"
        case let .misalignedSubByteTensor(file, tensor):
            return "\(file): tensor '\(tensor)': sub-byte tensor does not fill a whole number of bytes"
        case let .byteSizeMismatch(file, tensor, expected, actual):
            return "\(file): tensor '\(tensor)': data_offsets span \(actual) bytes but shape and dtype need \(expected)"
        case let .overlappingTensors(file, tensor, previous):
            return "\(file): tensor '\(tensor)' overlaps tensor '\(previous)'"
        case let .holeBeforeTensor(file, tensor, gapStart, gapEnd):
            return "\(file): hole in the data: bytes \(gapStart)..<\(gapEnd) before tensor '\(tensor)' belong to no tensor"
        case let .dataNotCoveringFile(file, tensorEnd, dataSize):
            return "\(file): tensors end at data byte \(tensorEnd) but the data section is \(dataSize) bytes (truncated or trailing bytes)"
        case let .duplicateTensor(file, tensor):
            return "\(file): duplicate tensor name '\(tensor)'"
        case let .noCheckpoint(directory):
            return "\(directory): no model.safetensors.index.json or model.safetensors found"
        case let .shardedOutput(directory):
            return "\(directory): a sharded output (placement.json): forward and validate take it whole; inspect, export and the "
                + "conversion stages take one checkpoint (a device directory such as \(directory)/device-0, or the checkpoint before shard)"
        case let .invalidIndex(file, reason):
            return "\(file): invalid index: \(reason)"
        case let .indexNamesMissingShard(file, shard, tensor):
            return "\(file): tensor '\(tensor)' is mapped to shard '\(shard)', which does not exist"
        case let .shardLacksTensor(file, shard, tensor):
            return "\(file): tensor '\(tensor)' is mapped to shard '\(shard)', which does not contain it"
        case let .tensorNotInIndex(file, shard, tensor):
            return "\(file): shard '\(shard)' holds tensor '\(tensor)', which the index does not list"
        case let .tensorInTwoShards(tensor, first, second):
            return "tensor '\(tensor)' appears in both '\(first)' and '\(second)'"
        case let .tensorNotFound(tensor):
            return "tensor '\(tensor)' is not in the checkpoint"
        case let .writeFailed(file, reason):
            return "\(file): write failed: \(reason)"
        case let .writePlanViolation(file, tensor, reason):
            return "\(file): tensor '\(tensor)': \(reason)"
        case let .outputExists(path):
            return "\(path): output already exists (pass --force to replace it)"
        case let .cannotCreateOutput(path, reason):
            return "\(path): cannot create output: \(reason)"
        case let .inputChanged(file, openedSize, size):
            return "\(file): the file changed while it was being read (\(openedSize) bytes when opened, \(size) now)"
        }
    }
}
