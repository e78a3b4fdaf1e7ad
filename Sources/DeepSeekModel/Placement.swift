import Foundation

/// Contiguous expert placement over devices (README "Expert placement"): device d holds experts
/// [d·E/N, (d+1)·E/N) of every MoE layer. With n_group == N each routing group sits on one device,
/// so DeepSeek-V2's bound of M = topk_group devices per token holds (vLLM's linear placement,
/// SGLang and DeepSeek's convert.py use the same ranges).
public struct ExpertPlacement: Codable, Equatable, Sendable {
    public var devices: Int
    public var experts: Int
    /// Routing groups (1 for greedy routing).
    public var groups: Int
    /// The most devices one token's routed experts can touch.
    public var deviceBoundM: Int

    enum CodingKeys: String, CodingKey {
        case devices, experts, groups
        case deviceBoundM = "device_bound_m"
    }

    public var expertsPerDevice: Int { experts / devices }
    public func range(device d: Int) -> Range<Int> { (d * expertsPerDevice)..<((d + 1) * expertsPerDevice) }
    public func device(ofExpert e: Int) -> Int { e / expertsPerDevice }

    /// Plans N devices, or says why groups would not stay whole, naming `configPath` (the
    /// `config.json` whose experts and groups these are).
    public static func plan(config: DeepSeekConfig, devices: Int, configPath: String = "config.json") throws -> ExpertPlacement {
        func invalidPlacement(reason: String) -> DeepSeekModelError { .invalidConfig(path: configPath, reason: reason) }
        guard devices >= 1 else { throw invalidPlacement(reason: "--devices must be at least 1") }
        guard let e = config.nRoutedExperts, e > 0, config.hasMoE else {
            throw invalidPlacement(reason: "the model has no routed experts to place")
        }
        guard e % devices == 0 else {
            throw invalidPlacement(reason: "\(e) routed experts do not split evenly over \(devices) devices")
        }
        let k = config.numExpertsPerTok ?? 1
        // Routing groups bound the devices a token reaches: DeepSeek-V2's group-limited routing and
        // the V3 family's noaux_tc (V3: 8 groups of 32, topk_group 4). Ungrouped routing (V2-Lite's
        // greedy, Kimi-K2's and Moonlight's n_group 1) reaches at most k devices.
        guard config.topkMethod.isGroupLimited, let g = config.nGroup, g > 1 else {
            return ExpertPlacement(devices: devices, experts: e, groups: 1, deviceBoundM: min(k, devices))
        }
        let topkGroups = config.topkGroup ?? g
        if g % devices == 0 {
            // Whole groups per device: a token's topk_group groups touch at most that many devices.
            return ExpertPlacement(devices: devices, experts: e, groups: g, deviceBoundM: min(topkGroups, devices))
        }
        if devices % g == 0 {
            // Each group spread evenly over devices/groups devices.
            return ExpertPlacement(devices: devices, experts: e, groups: g, deviceBoundM: min(topkGroups * (devices / g), k, devices))
        }
        throw invalidPlacement(reason: "\(devices) devices would split DeepSeek's \(g) routing groups unevenly (n_group must divide the device count or the device count divide n_group), losing the device bound M = \(topkGroups)")
    }
}

/// Where a sharded output keeps the non-expert weights (attention, norms, dense MLPs, embeddings).
public enum DenseReplication: String, Codable, Sendable {
    /// Every device holds them: each device directory loads on its own.
    case replicated
    /// Only device-0 holds them (`--dense-once`); the others point there.
    case once
}

/// A device checkpoint's record of its place, in its `config.json` under `dsconvert_placement`.
public struct PlacementRecord: Codable, Equatable, Sendable {
    public var rank: Int
    public var placement: ExpertPlacement
    /// Routed experts [start, end) this device holds in every MoE layer.
    public var expertRange: [Int]
    public var dense: DenseReplication
    /// Where this rank finds the non-expert weights (relative to its own directory).
    public var denseLocation: String

    enum CodingKeys: String, CodingKey {
        case rank, placement
        case expertRange = "expert_range"
        case dense
        case denseLocation = "dense_location"
    }

    public init(rank: Int, placement: ExpertPlacement, expertRange: [Int], dense: DenseReplication, denseLocation: String) {
        self.rank = rank
        self.placement = placement
        self.expertRange = expertRange
        self.dense = dense
        self.denseLocation = denseLocation
    }

    public static let configKey = "dsconvert_placement"
    public var holdsDense: Bool {
        switch dense {
        case .replicated: return true
        case .once: return rank == 0
        }
    }
}

