import DeepSeekModel
import Foundation
import SafeTensors

/// Opens a checkpoint directory for the forward pass, after checking it against its config.
///
/// A `dsconvert shard` output (device-*/ beside placement.json) opens as one model whose routed
/// experts are read from the device that holds them (expert parallelism).
public enum ModelLoader {
    public static func open(_ directory: URL) throws -> LoadedModel {
        let fm = FileManager.default
        let firstDevice = directory.appendingPathComponent("device-0")
        if fm.fileExists(atPath: directory.appendingPathComponent("placement.json").path), fm.fileExists(atPath: firstDevice.path) {
            return try openSharded(directory)
        }
        let checkpoint = try Checkpoint(directory: directory)
        let config = try DeepSeekConfig.load(directory: directory).matching(checkpoint)
        let report = CheckpointChecker.check(config: config, checkpoint: checkpoint)
        if let first = report.problems.first { throw first }
        return try LoadedModel(label: directory.path, config: config, weights: CheckpointWeights(checkpoint: checkpoint, fp8Block: config.quantization?.block))
    }

    private static func openSharded(_ directory: URL) throws -> LoadedModel {
        var devices: [CheckpointWeights] = []
        var checkpoints: [Checkpoint] = []
        var global: DeepSeekConfig?
        var placement: ExpertPlacement?
        var mtpAbsent = false
        var d = 0
        while true {
            let url = directory.appendingPathComponent("device-\(d)")
            guard FileManager.default.fileExists(atPath: url.path) else { break }
            let checkpoint = try Checkpoint(directory: url)
            var config = try DeepSeekConfig.load(directory: url)
            // Device 0 holds the dense weights, MTP's among them: whether the MTP layers are absent is decided there.
            if d == 0 { mtpAbsent = config.declaredMTPLayersWithoutWeights(in: checkpoint) > 0 }
            config = config.withoutMTPLayers(mtpAbsent, model: directory.path)
            guard let record = config.placement, record.rank == d else {
                throw DeepSeekModelError.invalidConfig(path: url.appendingPathComponent("config.json").path, reason: "no dsconvert_placement record for rank \(d)")
            }
            if let first = CheckpointChecker.check(config: config, checkpoint: checkpoint).problems.first { throw first }
            devices.append(CheckpointWeights(checkpoint: checkpoint, fp8Block: config.quantization?.block))
            checkpoints.append(checkpoint)
            // Experts are looked up with one placement: every device must state the same one.
            if let first = placement, first != record.placement {
                throw DeepSeekModelError.inconsistentPlacement(path: url.appendingPathComponent("config.json").path, reason: "placement differs from device-0's")
            }
            placement = record.placement
            if d == 0 {
                var g = config
                g.placement = nil
                global = g
            }
            d += 1
        }
        guard let config = global, let placement, placement.devices == devices.count else {
            throw DeepSeekModelError.invalidConfig(path: directory.path, reason: "device directories do not match placement.json")
        }
        try checkDevicesAsPlaced(directory, checkpoints)
        return try LoadedModel(label: directory.path, config: config,
                               weights: ExpertParallelWeights(devices: devices, placement: placement, label: directory.path), placement: placement)
    }
}

extension ModelLoader {
    /// Each device's weight files as `placement.json` lists them: the same names, the sizes of the
    /// files opened (a shard may be a link, as in a Hugging Face cache), and, where the device has
    /// its own `dsconvert.json`, the SHA-256 it records is the one placement.json records. A device
    /// directory copied from another shard run (of another model, or of the same one converted
    /// otherwise) was otherwise run as if it were this one's (found by an audit). Recorded hashes
    /// are compared, not the files hashed again, which would read the whole checkpoint once more;
    /// a device directory without its dsconvert.json is checked by names and sizes only.
    static func checkDevicesAsPlaced(_ directory: URL, _ devices: [Checkpoint]) throws {
        let path = directory.appendingPathComponent("placement.json").path
        let recorded = Dictionary(try fileRecords(path).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for (d, checkpoint) in devices.enumerated() {
            let device = "device-\(d)"
            let manifest = checkpoint.directory.appendingPathComponent("dsconvert.json").path
            let own = FileManager.default.fileExists(atPath: manifest)
                ? Dictionary(try fileRecords(manifest).map { ($0.name, $0.sha256) }, uniquingKeysWith: { a, _ in a }) : nil
            for shard in checkpoint.shardNames {
                let file = checkpoint.directory.appendingPathComponent(shard).path
                func refuse(_ reason: String) -> ReferenceModelError { .deviceNotAsPlaced(placement: path, file: file, reason: reason) }
                guard let record = recorded[device + "/" + shard] else { throw refuse("placement.json does not list it") }
                let size = checkpoint.shard(shard)?.mapping.size ?? -1
                guard size == record.bytes else { throw refuse("\(size) bytes, placement.json records \(record.bytes)") }
                if let own, own[shard] != record.sha256 { throw refuse("the SHA-256 its dsconvert.json records differs") }
            }
            let held = Set(checkpoint.shardNames)
            if let missing = recorded.keys.sorted().first(where: { $0.hasPrefix(device + "/") && !held.contains(String($0.dropFirst(device.count + 1))) }) {
                throw ReferenceModelError.deviceNotAsPlaced(placement: path, file: directory.appendingPathComponent(missing).path, reason: "the device does not hold it")
            }
        }
    }

    /// The `files` list of a dsconvert record (placement.json, dsconvert.json).
    private static func fileRecords(_ path: String) throws -> [FileRecord] {
        struct Files: Decodable { let files: [FileRecord] }
        do {
            return try JSONDecoder().decode(Files.self, from: FilePath.readRegularFile(path)).files
        } catch {
            throw DeepSeekModelError.invalidConfig(path: path, reason: "not a dsconvert record with a files list (name, bytes, sha256)")
        }
    }
}

/// Weights of a sharded output: each routed expert from the device that holds it, everything else
/// from device 0 (which holds the non-expert weights whether they are replicated or written once).
public final class ExpertParallelWeights: WeightProvider {
    public let devices: [CheckpointWeights]
    public let placement: ExpertPlacement
    public let label: String

    init(devices: [CheckpointWeights], placement: ExpertPlacement, label: String) {
        self.devices = devices
        self.placement = placement
        self.label = label
    }

    private func owner(_ name: String) -> CheckpointWeights {
        TensorNames.expertIndex(of: name).map { devices[placement.device(ofExpert: $0)] } ?? devices[0]
    }

    public func floats(_ name: String, shape: [Int]) throws -> [Float] { try owner(name).floats(name, shape: shape) }
    public func release(_ name: String) { owner(name).release(name) }
    public func rows(_ name: String, shape: [Int], range: Range<Int>) throws -> [Float] { try owner(name).rows(name, shape: shape, range: range) }
    public func floats(_ name: String, shape: [Int], into destination: UnsafeMutableBufferPointer<Float>) throws {
        try owner(name).floats(name, shape: shape, into: destination)
    }
    public func rows(_ name: String, shape: [Int], range: Range<Int>, into destination: UnsafeMutableBufferPointer<Float>) throws {
        try owner(name).rows(name, shape: shape, range: range, into: destination)
    }

    /// Each device's share of `names`, read by that device's prefetcher.
    public func prefetch(_ names: [String]) {
        for (d, device) in devices.enumerated() { device.prefetch(names.filter { owner($0) === devices[d] }) }
    }

    /// Rows of `name` requested from the device that holds it.
    public func willNeedRows(_ name: String, shape: [Int], rows: [Int]) { owner(name).willNeedRows(name, shape: shape, rows: rows) }

    /// The stored form of `name` from the device that holds it.
    public func stored(_ name: String, shape: [Int]) throws -> StoredWeight? { try owner(name).stored(name, shape: shape) }

    /// Each device's share of `names`, retired from that device's prefetcher.
    public func retire(_ names: [String]) {
        for (d, device) in devices.enumerated() { device.retire(names.filter { owner($0) === devices[d] }) }
    }

    public func prefetchTotals() -> WeightPrefetcher.Totals {
        devices.map { $0.prefetchTotals() }.reduce(WeightPrefetcher.Totals(), +)
    }
}
