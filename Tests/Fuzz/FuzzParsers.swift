// libFuzzer entry point for the parsers that read untrusted bytes: the safetensors header, the
// sharded index and config.json. Built by scripts/fuzz.sh (swiftc -sanitize=fuzzer,address);
// the first byte selects the parser, the rest is its input. Every input must end in a value or a
// thrown error, never a trap, a leak of the sanitizer's attention or a hang.
import DeepSeekModel
import Foundation
import SafeTensors

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzParsers(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    guard let start, count > 0 else { return 0 }
    let selector = start.load(as: UInt8.self) % 3
    let body = UnsafeRawBufferPointer(start: start + 1, count: count - 1)
    switch selector {
    case 0:
        // As a whole file: the 8-byte length, the header, the data.
        if let header = try? SafeTensorsHeader.parse(prefix: body, fileSize: body.count, file: "fuzz.safetensors") {
            for info in header.tensors { precondition(info.dataOffsets.upperBound <= body.count - header.dataStart) }
            _ = SafeTensorsHeader.serialize(tensors: header.tensors, metadata: header.metadata)
        }
    case 1:
        _ = try? Checkpoint.parseIndex(Data(body), file: "fuzz/model.safetensors.index.json")
    default:
        if let config = try? DeepSeekV2Config.decode(Data(body), path: "fuzz/config.json") {
            _ = ModelAccounting(config: config)
            _ = AbsorptionCost(config: config)
            _ = CheckpointChecker.self
        }
    }
    return 0
}
