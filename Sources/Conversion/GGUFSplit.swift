import Foundation
import GGUF
import SafeTensors

/// Split output as llama.cpp's `gguf-split --split --split-max-size` writes it, so llama.cpp loads the
/// parts as one model: tensors in order, a new file when the next tensor (padded) would take the current
/// file's tensor bytes past the limit; every file carries `split.no` (u16), `split.tensors.count` (i32,
/// all files' tensors) and `split.count` (u16), in that order after the rest of the metadata, which only
/// the first file has; names `BASE-0000i-of-0000N.gguf` (one file: `BASE.gguf`).
enum GGUFSplit {
    struct File {
        let name: String
        let metadata: [GGUFMetadata]
        let tensors: [GGUFPlannedTensor]
        let infos: [GGUFTensorInfo]

        /// The file as the checkpoint writer lays it out: the GGUF header, then each tensor padded to the alignment.
        var plan: ShardPlan {
            ShardPlan(fileName: name, prefix: GGUFEncoder.header(metadata: metadata, tensors: infos),
                      extents: infos.map { ($0.name, GGUFEncoder.padded($0.byteCount)) })
        }
    }

    static func files(_ tensors: [GGUFPlannedTensor], metadata: [GGUFMetadata], base: String, maxBytes: Int?, output: URL) throws -> [File] {
        guard let maxBytes else {
            return [File(name: base + ".gguf", metadata: metadata, tensors: tensors, infos: GGUFEncoder.layout(tensors.map(\.info)))]
        }
        var groups: [[GGUFPlannedTensor]] = [[]]
        var size = 0
        for t in tensors {
            let bytes = GGUFEncoder.padded(t.info.byteCount)
            if size + bytes > maxBytes {
                // gguf-split refuses a split without tensors (a first tensor larger than the limit).
                guard !groups[groups.count - 1].isEmpty else {
                    throw ConversionError.unsupportedInput(path: output.path, reason: "tensor '\(t.name)' (\(bytes) bytes) is larger than --split-max-size \(maxBytes)")
                }
                groups.append([])
                size = 0
            }
            groups[groups.count - 1].append(t)
            size += bytes
        }
        return groups.enumerated().map { i, group in
            let split = [GGUFMetadata("split.no", .uint16(UInt16(i))), GGUFMetadata("split.tensors.count", .int32(Int32(tensors.count))),
                         GGUFMetadata("split.count", .uint16(UInt16(groups.count)))]
            let name = String(format: "%@-%05d-of-%05d.gguf", base, i + 1, groups.count)
            return File(name: name, metadata: (i == 0 ? metadata : []) + split, tensors: group,
                        infos: GGUFEncoder.layout(group.map(\.info)))
        }
    }
}
