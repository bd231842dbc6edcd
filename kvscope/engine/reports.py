"""What the engine reports about itself: its shape (the first event of every recording),
a snapshot of its whole KV and request state for a listener joining mid-run, its
counters, and the event that closes each step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvscope.events import EngineStarted, ScheduledChunk, Snapshot, StageTime, StepEnd
from kvscope.kernels.build import cpu_kernels
from kvscope.sched.scheduler import Schedule, ScheduledRequest

if TYPE_CHECKING:
    from kvscope.engine.llm_engine import LLMEngine


def core_stats(engine: LLMEngine) -> dict[str, Any]:
    pool = engine.kv.pool
    sched = engine.scheduler
    queried = engine.kv.num_queried_tokens
    return {
        "num_running": len(sched.running),
        "num_waiting": len(sched.waiting),
        "num_swapped": len(sched.swapped),
        "num_blocks": pool.num_blocks,
        "num_used_blocks": pool.num_used_blocks,
        "num_free_blocks": pool.num_free_blocks,
        "kv_cache_usage": pool.usage(),
        "num_preemptions": sched.num_preemptions,
        "num_swap_outs": sched.num_swap_outs,
        "num_swap_ins": sched.num_swap_ins,
        "num_swap_fallbacks": sched.num_swap_fallbacks,
        "num_free_swap_slots": engine.kv.swap_slots.num_free,
        "prefix_cache_queries": queried,
        "prefix_cache_hits": engine.kv.num_hit_tokens,
        "prefix_cache_hit_rate": engine.kv.num_hit_tokens / queried if queried else 0.0,
        "num_cached_blocks": pool.num_cached_blocks,
        "num_evictions": pool.num_evictions,
        "num_steps": sched.num_steps,
        "num_shared_blocks": pool.num_shared_blocks,
        "num_forked_sequences": engine.kv.num_forks,
        "num_copies_on_write": engine.kv.num_copies_on_write,
        "paged_waste": engine.run_fragmentation.paged_waste,
        "contiguous_waste": engine.run_fragmentation.contiguous_waste,
        "contiguous_own_waste": engine.run_fragmentation.contiguous_own_waste,
        "num_generated_tokens": engine.num_generated_tokens,
        "num_computed_tokens": engine.num_computed_tokens,
        "num_computed_prompt_tokens": engine.num_computed_prompt_tokens,
        "num_slot_steps": sched.num_slot_steps,  # batching="static" only, as the next
        "num_idle_slot_steps": sched.num_idle_slot_steps,
    }


def describe(engine: LLMEngine) -> EngineStarted:
    """The engine's shape as an event (the first one of every recording)."""
    arch = engine.loaded.arch
    config = engine.config
    return EngineStarted(
        model=engine.loaded.path.name, num_layers=arch.num_layers, num_heads=arch.num_heads,
        num_kv_heads=arch.num_kv_heads, head_dim=arch.head_dim,
        dtype=str(config.dtype).removeprefix("torch."),
        kv_bytes_per_token=arch.kv_bytes_per_token(config.dtype.itemsize),
        block_size=engine.kv.block_size, num_blocks=engine.num_blocks,
        num_swap_slots=engine.kv.swap_slots.num_slots,
        max_model_len=engine.max_model_len, max_num_seqs=config.scheduler.max_num_seqs,
        max_num_batched_tokens=config.scheduler.max_num_batched_tokens,
        enable_prefix_caching=engine.kv.enable_caching,
        preemption_mode=config.scheduler.preemption_mode, policy=config.scheduler.policy,
        tensor_parallel_size=config.tensor_parallel_size,
        pipeline_parallel_size=config.pipeline_parallel_size,
        ranks=list(getattr(engine.executor, "ranks", [])), weights=engine.loaded.weights,
        kernels=kernels.isa() if (kernels := cpu_kernels()) is not None else "")


def snapshot(engine: LLMEngine) -> Snapshot:
    """The whole KV and request state now, for a listener joining mid-run."""
    sched = engine.scheduler
    requests = []
    for queue in (sched.running, sched.waiting, sched.swapped):
        for request in queue:
            requests.append({
                "request_id": request.request_id, "status": request.status.value,
                "prompt_token_ids": request.prompt_token_ids,
                "output_token_ids": request.output_token_ids,
                "num_computed_tokens": request.num_computed_tokens,
                "priority": request.priority})
    return Snapshot(
        step=sched.num_steps, time=engine.events.elapsed(),
        engine=describe(engine).to_dict(),
        blocks=[[b.ref_cnt, b.block_hash.hex() if b.block_hash else None]
                for b in engine.kv.pool.blocks],
        tables=engine.kv.all_block_ids(),
        swapped=engine.kv.swapped_slots(), requests=requests,
        counters={"prefix_cache_queries": engine.kv.num_queried_tokens,
                  "prefix_cache_hits": engine.kv.num_hit_tokens,
                  "num_preemptions": sched.num_preemptions,
                  "num_evictions": engine.kv.pool.num_evictions,
                  "num_steps": sched.num_steps})


def step_end(engine: LLMEngine, sched: Schedule, in_flight: int = 1) -> StepEnd:
    t = engine.last_timings
    collectives, collective_s = engine.executor.collective_stats()
    clock = engine.events.on_run_clock
    stages = [StageTime(stage=stage, start=clock(start), end=clock(end), num_collectives=n,
                        collective_ms=round(seconds * 1e3, 3))
              for stage, start, end, n, seconds in engine.executor.stage_times()]
    return StepEnd(
        batch=[ScheduledChunk(request_id=s.request.request_id, start=s.start,
                              num_tokens=s.num_tokens, phase=phase(s),
                              num_draft_tokens=len(s.draft_token_ids))
               for s in sched.scheduled],
        num_tokens=sched.num_tokens, schedule_ms=round(t.schedule_s * 1e3, 3),
        forward_ms=round(t.forward_s * 1e3, 3), sample_ms=round(t.sample_s * 1e3, 3),
        update_ms=round(t.update_s * 1e3, 3), num_free_blocks=engine.kv.num_free_blocks,
        num_running=len(engine.scheduler.running), num_waiting=len(engine.scheduler.waiting),
        num_swapped=len(engine.scheduler.swapped),
        fragmentation=engine.last_fragmentation.as_dict(),
        num_collectives=collectives, collective_ms=round(collective_s * 1e3, 3),
        batches_in_flight=in_flight, stages=stages)


def phase(item: ScheduledRequest) -> str:
    if item.draft_token_ids:
        return "verify"
    return "decode" if item.is_decode else "prefill"
