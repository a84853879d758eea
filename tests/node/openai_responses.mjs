// The official openai Node client's Responses API against the gateway: one text call, one stream.
import OpenAI from 'openai';

import { runCases, settings } from './common.mjs';

const { baseURL, apiKey, model } = settings();
const client = new OpenAI({ baseURL: `${baseURL}/v1`, apiKey, maxRetries: 0, timeout: 20_000 });

await runCases({
  async text() {
    const { data, response } = await client.responses
      .create({ model, input: 'Hello there!', instructions: 'Be brief.' })
      .withResponse();
    return {
      id: data.id,
      status: data.status,
      model: data.model,
      output_text: data.output_text,
      output_types: data.output.map((item) => item.type),
      usage: data.usage,
      credits_remaining: response.headers.get('x-clex-credits-remaining'),
    };
  },
  async stream() {
    const stream = await client.responses.create({ model, input: 'Hello there!', stream: true });
    const types = [];
    const sequence = [];
    let text = '';
    let completed = null;
    for await (const event of stream) {
      types.push(event.type);
      sequence.push(event.sequence_number);
      if (event.type === 'response.output_text.delta') text += event.delta;
      if (event.type === 'response.completed') completed = event.response;
    }
    return { types, sequence, text, status: completed?.status, usage: completed?.usage };
  },
});
